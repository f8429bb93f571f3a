#!/usr/bin/env bash
# `make soak`: a bounded soak of a whole local deployment, ending in one JSON line on stdout
# (everything else goes to stderr).
#
#  1. a fresh `make up DB=postgres ENCLAVES=2` (scripts/up.sh) in its own DEV_DIR
#     (target/soak/dev) on its own ports, so a developer's .dev/ and its cosigners are never
#     touched;
#  2. cosigner-soak (tests/src/bin/cosigner-soak.rs): 50 wallets, each in its own client home
#     with an enrollment token from `cosigner-parent enrollment issue`; then 50 concurrent clients
#     for SOAK_SECONDS, signing through the client library (one session each, one round trip per
#     signature), refreshing every 200 signatures, verifying every signature (BIP-340) before
#     counting it; halfway, enclave instance 2 is killed (SIGKILL) and started again 3 s later
#     (`start_enclave` of scripts/lib.sh, through `soak.sh restart-enclave 2`); at the end every
#     wallet signs once more;
#  3. the deployment is stopped (also on failure or Ctrl-C); its state and logs stay under
#     target/soak/ until the next run.
#
# Variables: SOAK_SECONDS (300), SOAK_WALLETS (50), SOAK_CLIENTS (50), SOAK_DIR (target/soak),
# SOAK_PROVIDER_PORT (7301) and SOAK_RECOVERY_PORT (7401) (their mailboxes +2), SOAK_DB
# (postgres), SOAK_ENCLAVES (2), BIN (target/debug).
#
# Exit status: cosigner-soak's (0 the goals met; 1 an error the kill does not explain, a lost
# wallet, or a failed setup), or up.sh's when the deployment does not start.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
. scripts/lib.sh
SOAK_DIR=${SOAK_DIR:-$ROOT/target/soak}
export DEV_DIR="$SOAK_DIR/dev"
export BIN="${BIN:-$ROOT/target/debug}"
export COSIGNER_PKCS11_MODULE=${COSIGNER_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

# `soak.sh restart-enclave K`: what cosigner-soak runs to start the killed instance again (the
# environment above is the deployment's).
if [ "${1:-}" = restart-enclave ]; then
  DEV=$DEV_DIR
  MODULE=$COSIGNER_PKCS11_MODULE
  if ! declare -F start_enclave > /dev/null; then
    echo "soak: scripts/lib.sh has no start_enclave (no ENCLAVES support)" >&2
    exit 1
  fi
  start_enclave "$DEV/provider" "${2:?instance number}"
  exit 0
fi

SOAK_SECONDS=${SOAK_SECONDS:-300}
export PROVIDER_PORT=${SOAK_PROVIDER_PORT:-7301}
export RECOVERY_PORT=${SOAK_RECOVERY_PORT:-7401}
export DB=${SOAK_DB:-postgres}
export ENCLAVES=${SOAK_ENCLAVES:-2}

teardown() {
  ./scripts/down.sh >&2 || true
}
trap teardown EXIT
trap 'exit 130' INT TERM

# A fresh deployment each run: figures from a store full of earlier runs' wallets would not
# compare. A previous run that was killed before its teardown is stopped first.
if [ -d "$DEV_DIR" ]; then
  ./scripts/down.sh > /dev/null 2>&1 || true
fi
rm -rf "$SOAK_DIR"
mkdir -p "$SOAK_DIR"
# start_postgres runs the server as the `postgres` user under root: it must reach DEV_DIR.
chmod 755 "$SOAK_DIR"

echo "soak: starting the deployment in ${DEV_DIR#"$ROOT"/} (DB=$DB ENCLAVES=$ENCLAVES, ports $PROVIDER_PORT/$RECOVERY_PORT)" >&2
./scripts/up.sh >&2
# shellcheck disable=SC1091
. "$DEV_DIR/cosigner.env"

# Every soak client connects from 127.0.0.1, and a parent keeps at most 32 connections per source
# address (docs/architecture.md, "Connection limits"): 50 clients would be refused as one flood.
# As an operator whose clients share a NAT would, raise the quota to its maximum (256) in both
# parents' configuration and restart them (the enclaves reconnect to the store by themselves).
for cosigner in provider recovery; do
  dir=$DEV_DIR/$cosigner
  if ! grep -q '^\[client_limits\]' "$dir/parent.toml"; then
    printf '\n[client_limits]\nmax_connections_per_source = 256\n' >> "$dir/parent.toml"
  fi
  pid=$(cat "$dir/parent.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  nohup "$BIN/cosigner-parent" run --config "$dir/parent.toml" >> "$dir/parent.log" 2>&1 &
  echo $! > "$dir/parent.pid"
done
up=
for _ in $(seq 100); do
  if "$BIN/cosigner" status > /dev/null 2>&1; then up=1; break; fi
  sleep 0.1
done
if [ -z "$up" ]; then
  echo "soak: the parents did not come back with [client_limits]:" >&2
  tail -n 5 "$DEV_DIR"/*/parent.log >&2
  exit 1
fi

# up.sh returns once one instance answers; the soak needs every one listening (or to say which
# did not start).
for pidfile in "$DEV_DIR"/provider/enclave-*.pid; do
  [ -f "$pidfile" ] || continue
  k=$(basename "$pidfile" .pid)
  for _ in $(seq 300); do
    [ -S "$DEV_DIR/provider/$k.sock" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null && break
    sleep 0.1
  done
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "soak: provider $k did not start:" >&2
    tail -n 3 "$DEV_DIR/provider/$k.log" >&2
    exit 1
  fi
done

kill_args=()
if [ -f "$DEV_DIR/provider/enclave-2.pid" ]; then
  kill_args=(--kill-pid-file "$DEV_DIR/provider/enclave-2.pid"
    --restart-command "$(printf '%q ' "$ROOT/scripts/soak.sh" restart-enclave 2)")
else
  echo "soak: the provider runs one enclave instance (no $DEV_DIR/provider/enclave-2.pid): the kill step is skipped" >&2
fi

"$BIN/cosigner-soak" \
  --provider "$COSIGNER_PROVIDER" --recovery "$COSIGNER_RECOVERY" --trust "$COSIGNER_TRUST" \
  --operator-key "$DEV_DIR/enrollment/operator.pem" --dev "$DEV_DIR" --work "$SOAK_DIR" \
  --seconds "$SOAK_SECONDS" --wallets "${SOAK_WALLETS:-50}" --clients "${SOAK_CLIENTS:-50}" \
  "${kill_args[@]}"
