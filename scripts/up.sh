#!/usr/bin/env bash
# `make up`: a local deployment on loopback, state under .dev/ (kept across restarts):
#
#   .dev/provider/  Shard B: cosigner-parent (TCP :${PROVIDER_PORT:-7101}) + cosigner-enclave
#       token/      its SoftHSM token store (attestation, operator root and sealing keys)
#       store/      the parent's SQLite database of sealed blobs
#       attester/   local attester: attester.toml, root.pem (pinned by clients), attester.pem
#   .dev/recovery/  Shard C: the same binaries, its own token, TCP :${RECOVERY_PORT:-7201}
#   .dev/enrollment/  the operator's enrollment key (operator.pem, 0600) and its public half
#       (operator.pub): the provider creates wallets only for devices holding a token signed by
#       it (`[enrollment] mode = "token"`); the recovery cosigner stays open (`mode = "open"`)
#   .dev/trust.toml the client's trust file (both operator roots, PCR0 of the enclave binary)
#   .dev/cosigner.env  `. .dev/cosigner.env` puts `cosigner` on the PATH and exports
#       COSIGNER_PROVIDER, COSIGNER_RECOVERY, COSIGNER_TRUST, COSIGNER_MAILBOX, COSIGNER_METRICS
#       (the provider parent's operator listener, PROVIDER_PORT+3: /metrics, /healthz, /readyz)
#       and, unless already set, COSIGNER_HOME (.dev/home)
#   .dev/home/      the default client home of that environment
#   .dev/postgres/  DB=postgres only: the provider parent's private PostgreSQL cluster (data/,
#       its unix socket, postgres.log; start_postgres in scripts/lib.sh), database `cosigner`
#
# Variables: PROVIDER_PORT (7101; its mailbox listens on PROVIDER_PORT+2, its operator listener on
# PROVIDER_PORT+3), RECOVERY_PORT (7201;
# its parent's mailbox on RECOVERY_PORT+2), BIN (target/debug: where the binaries are),
# COSIGNER_PKCS11_MODULE (SoftHSM's), DEV_DIR (.dev: a second deployment beside the first),
# ENCLAVES (1: how many provider enclave instances share its token and store, behind its one
# parent; with more than one they are .dev/provider/enclave-K.{toml,sock,pid,log}, K = 1..N),
# DB (sqlite: the provider's parent keeps its store and mailbox in .dev/provider/store/store.db;
# postgres: in the cluster under .dev/postgres; the recovery cosigner stays on SQLite). A
# deployment keeps the engine it was made with: its enclave's anchors name blobs only that store
# holds (`make down` and remove .dev to change it).
#
# Returns once both cosigners answer an attested request. `make down` stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROOT=$(pwd)
DEV="${DEV_DIR:-$ROOT/.dev}"
BIN="${BIN:-$ROOT/target/debug}"
BIN=$(cd "$BIN" && pwd)  # absolute: cosigner.env puts it on the PATH
PROVIDER_PORT=${PROVIDER_PORT:-7101}
RECOVERY_PORT=${RECOVERY_PORT:-7201}
MODULE=${COSIGNER_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

mkdir -p "$DEV"
chmod 700 "$DEV"

# Wallet enrollment (docs/deployment.md): the operator key is made once, at the first `make up`,
# and kept, so tokens issued earlier stay valid across restarts. keygen prints the public key only
# when it makes the key; it is kept beside it for the configuration and for operators.
ENROLL="$DEV/enrollment"
mkdir -p "$ENROLL"
chmod 700 "$ENROLL"
if [ ! -e "$ENROLL/operator.pem" ]; then
  "$BIN/cosigner-parent" enrollment keygen --out "$ENROLL/operator.pem" > "$ENROLL/operator.pub.tmp"
  mv "$ENROLL/operator.pub.tmp" "$ENROLL/operator.pub"
elif [ ! -s "$ENROLL/operator.pub" ]; then
  echo "$ENROLL/operator.pem exists without operator.pub: remove $ENROLL for a new operator key" >&2
  exit 1
fi
OPERATOR_KEY=$(cat "$ENROLL/operator.pub")

# DB: where the provider's parent keeps its store and mailbox (docs/deployment.md, "PostgreSQL").
DB=${DB:-sqlite}
engine="$DEV/provider/store/engine"
made_with=$(cat "$engine" 2>/dev/null || { [ -f "$DEV/provider/store/store.db" ] && echo sqlite; } || true)
if [ -n "$made_with" ] && [ "$made_with" != "$DB" ]; then
  echo "$DEV/provider keeps its store in $made_with; DB=$DB would start its enclave on an empty store," >&2
  echo "which it refuses (its anchors name blobs only that store holds): make up DB=$made_with, or make down" >&2
  echo "and remove $DEV for a new deployment" >&2
  exit 1
fi
case $DB in
  sqlite) PROVIDER_DATABASE="" ;;
  postgres)
    # The server runs as the `postgres` user when this is root: it must get through $DEV to its
    # socket directory. 0711 lets it pass without listing; provider/, recovery/ and enrollment/
    # stay 0700.
    chmod 711 "$DEV"
    start_postgres "$DEV/postgres" cosigner
    PROVIDER_DATABASE="postgres://cosigner@/cosigner?host=$(cd "$DEV/postgres" && pwd)"
    ;;
  *) echo "DB=$DB: expected sqlite or postgres" >&2; exit 1 ;;
esac
mkdir -p "$DEV/provider/store"
echo "$DB" > "$engine"

ENCLAVES=${ENCLAVES:-1} DATABASE="$PROVIDER_DATABASE" \
  METRICS_LISTEN="127.0.0.1:$((PROVIDER_PORT + 3))" start_cosigner provider "$PROVIDER_PORT" "[enrollment]
mode = \"token\"
operator_key = \"$OPERATOR_KEY\""
ENCLAVES=1 DATABASE="" METRICS_LISTEN="" start_cosigner recovery "$RECOVERY_PORT" "[enrollment]
mode = \"open\""

cat > "$DEV/trust.toml" <<CONF
# Trust file of the local setup: both operators' roots, and the enclave binary's measurement.
roots = ["provider/attester/root.pem", "recovery/attester/root.pem"]
max_age_seconds = 300

[[measurement]]
pcr0 = "$("$BIN/cosigner-enclave" measure)"
CONF
cat > "$DEV/cosigner.env" <<CONF
# \`. $DEV/cosigner.env\`: the local deployment's client settings (written by scripts/up.sh).
export PATH="$BIN:\$PATH"
: "\${COSIGNER_HOME:=$DEV/home}"
export COSIGNER_HOME
export COSIGNER_PROVIDER=tcp://127.0.0.1:$PROVIDER_PORT
export COSIGNER_RECOVERY=tcp://127.0.0.1:$RECOVERY_PORT
export COSIGNER_TRUST=$DEV/trust.toml
export COSIGNER_MAILBOX=tcp://127.0.0.1:$((PROVIDER_PORT + 2))
export COSIGNER_METRICS=http://127.0.0.1:$((PROVIDER_PORT + 3))
CONF

# shellcheck disable=SC1091
. "$DEV/cosigner.env"
for _ in $(seq 100); do
  if "$BIN/cosigner" status > /dev/null 2>&1; then
    echo "cosigner is up: provider $COSIGNER_PROVIDER, recovery $COSIGNER_RECOVERY"
    echo "  wallet enrollment: the provider requires tokens signed by operator key $OPERATOR_KEY"
    echo "    ($ENROLL/operator.pem); the recovery cosigner is open"
    echo "  put cosigner on the PATH and set its environment (client home $COSIGNER_HOME):"
    echo "    . ${DEV#"$ROOT"/}/cosigner.env"
    echo "  then e.g.:"
    echo "    cosigner status"
    echo "    cosigner-parent enrollment issue --operator-key $ENROLL/operator.pem \\"
    echo "      --device-key \$(cosigner --home /tmp/alice device-key) --expires-in-days 30 --out /tmp/alice.token"
    echo "    cosigner --home /tmp/alice wallet create --enrollment-token /tmp/alice.token --json"
    exit 0
  fi
  sleep 0.1
done
echo "cosigner did not come up; last words:" >&2
tail -n 5 "$DEV"/*/parent.log "$DEV"/*/enclave.log >&2 || true
"$BIN/cosigner" status >&2 || true
exit 1
