#!/usr/bin/env bash
# Build Shoal, start the control plane, and apply the sample workload.
# The server keeps running in the foreground; Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${SHOAL_DATA_DIR:-/var/lib/shoal}"
LISTEN="${SHOAL_LISTEN:-127.0.0.1:6443}"

command -v gcc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential; }
rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip2$' || rustup target add wasm32-wasip2
cargo build --release -p shoal
BIN="$PWD/target/release/shoal"

LOG="$(mktemp)"
"$BIN" server --data-dir "$DATA_DIR" --listen "$LISTEN" >"$LOG" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 300); do
  grep -q ready "$LOG" && break
  kill -0 $PID 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.1
done
cat "$LOG"
export KUBECONFIG="$DATA_DIR/admin.kubeconfig"
if [ -x /usr/bin/kubectl ]; then
  kubectl apply -f examples/web.yaml
  kubectl get deployments,services,configmaps
  echo
  echo "Shoal is serving. Try: KUBECONFIG=$KUBECONFIG kubectl get all"
  echo "(No node agent is built yet, so pods are stored but not run.)"
else
  echo "kubectl is not installed; the API is at https://$LISTEN with $KUBECONFIG"
fi
wait $PID
