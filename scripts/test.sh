#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian 12 machine (as root, with
# the Rust toolchain), then run formatting, lints and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v gcc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v curl >/dev/null || need_apt+=(curl)
# The node agent's end-to-end tests run real containers: runc, a static
# busybox for the test image, and `ip` (the pod sandbox brings loopback up).
command -v runc >/dev/null || need_apt+=(runc)
command -v ip >/dev/null || need_apt+=(iproute2)
dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
# Image tests: a static busybox to build test images from, Debian's registry to
# pull from, and htpasswd for its basic auth.
[ -x /bin/busybox ] || need_apt+=(busybox-static)
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v htpasswd >/dev/null || need_apt+=(apache2-utils)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if [ ! -x /usr/bin/kubectl ]; then
  echo "note: /usr/bin/kubectl is missing; the kubectl end-to-end test will skip" >&2
fi
# Plugins are built to WebAssembly components by host/build.rs.
rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip2$' || rustup target add wasm32-wasip2
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# The plugin workspace's native crate (the scheduling policy logic).
(cd plugins && cargo clippy --all-targets -- -D warnings && cargo test)
