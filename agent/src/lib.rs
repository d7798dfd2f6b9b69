//! Shoal node agent: not built yet (see docs/ARCHITECTURE.md).
