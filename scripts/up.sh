#!/usr/bin/env bash
# Build Shoal, start the control plane and a local node agent in one process
# (`shoal up`), import a busybox image built from Debian's busybox-static, and
# run the sample workload. Runs in the foreground; Ctrl-C stops Shoal (running
# containers are left running and adopted at the next start).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${SHOAL_DATA_DIR:-/var/lib/shoal}"
LISTEN="${SHOAL_LISTEN:-127.0.0.1:6443}"
# Extra `shoal up` flags, e.g. SHOAL_UP_ARGS="--pod-network none" to leave the
# machine's network untouched (pods then have loopback only).
read -r -a UP_ARGS <<<"${SHOAL_UP_ARGS:-}"

need_apt=()
command -v gcc >/dev/null || need_apt+=(build-essential)
command -v runc >/dev/null || need_apt+=(runc)
command -v ip >/dev/null || need_apt+=(iproute2)
# The agent's service proxy programs its own nftables tables with `nft`.
command -v nft >/dev/null || need_apt+=(nftables)
dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
rustup target list --installed 2>/dev/null | grep -q '^wasm32-wasip2$' || rustup target add wasm32-wasip2
cargo build --release -p shoal
BIN="$PWD/target/release/shoal"

WORK="$(mktemp -d)"
LOG="$WORK/shoal.log"
"$BIN" up --data-dir "$DATA_DIR" --listen "$LISTEN" "${UP_ARGS[@]}" >"$LOG" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT INT TERM
for _ in $(seq 1 300); do
  grep -q ready "$LOG" && break
  kill -0 $PID 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.1
done
grep ready "$LOG"
export KUBECONFIG="$DATA_DIR/admin.kubeconfig"

# Air-gapped style: build the image locally and load it into the cluster's
# registry, which serves docker.io names to the node.
bash examples/build-busybox-image.sh "$WORK/busybox.tar" >/dev/null
"$BIN" image import --kubeconfig "$KUBECONFIG" "$WORK/busybox.tar"

if [ -x /usr/bin/kubectl ]; then
  kubectl apply -f examples/web.yaml
  # The Deployment's pods appear once its controllers have acted.
  for _ in $(seq 1 100); do
    kubectl get pods -l app=web -o name | grep -q . && break
    sleep 0.2
  done
  kubectl wait --for=condition=Ready pod -l app=web --timeout=120s
  kubectl get nodes,pods -o wide
  echo
  echo "Shoal is serving. Try: KUBECONFIG=$KUBECONFIG kubectl get all"
else
  echo "kubectl is not installed; the API is at https://$LISTEN with $KUBECONFIG"
fi
wait $PID
