#!/usr/bin/env bash
# Build the require-labels admission plugin (Python) into a WebAssembly
# component: build.sh [OUT_DIR] writes OUT_DIR/require-labels.wasm (default:
# the current directory).
#
# Needs componentize-py (pinned below; `scripts/test.sh` installs it). It is
# taken from $COMPONENTIZE_PY, else from PATH, else from the virtualenv that
# scripts/test.sh makes at target/toolchains/py.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$(mkdir -p "${1:-.}" && cd "${1:-.}" && pwd)"
want=0.25.1

cpy="${COMPONENTIZE_PY:-}"
if [ -z "$cpy" ]; then
  if command -v componentize-py >/dev/null; then
    cpy=componentize-py
  elif [ -x "$repo/target/toolchains/py/bin/componentize-py" ]; then
    cpy="$repo/target/toolchains/py/bin/componentize-py"
  else
    echo "build.sh: componentize-py $want not found; install it with" >&2
    echo "  python3 -m pip install componentize-py==$want   (or run scripts/test.sh)" >&2
    exit 127
  fi
fi
have="$("$cpy" --version | awk '{print $2}')"
if [ "$have" != "$want" ]; then
  echo "build.sh: warning: componentize-py $have, this plugin is tested with $want" >&2
fi

# componentize-py writes bytecode caches next to the sources it imports:
# build from a copy, so nothing appears in plugins/ (host/build.rs watches it).
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
cp "$here/app.py" "$src/"
cd "$src"
"$cpy" -d "$repo/wit" -w admission componentize app -o "$out/require-labels.wasm"
