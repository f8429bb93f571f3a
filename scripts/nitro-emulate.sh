#!/usr/bin/env bash
# make nitro-emulate QEMU=PATH NITRO_BLOBS=DIR: boot the real enclave image (the EIF of
# `make enclave-image`) in QEMU's `nitro-enclave` machine and run a client session against it
# (docs/nitro.md, "Emulator"):
#
#   1. check the tools: QEMU >= 9.2 with the nitro-enclave machine (built with libcbor and
#      gnutls), the blobs (bzImage, bzImage.config, cmdline, nsm.ko), /dev/kvm;
#   2. build vhost-device-vsock 0.3.0 from crates.io with the parent's CID set to 3 (below);
#   3. start the KMS stand-in with Recipient (TLS under its own CA) that the image seals with;
#   4. build the EIF with a configuration that trusts that CA and is otherwise the image's own;
#   5. start a local recovery cosigner (Shard C), the parent (relaying to the guest's vsock port
#      5000, serving the store and the KMS proxy to the guest's CID-3 ports), the boot heartbeat
#      answer nitro-cli gives, vhost-device-vsock and QEMU;
#   6. client session: attestation by the emulated NSM (PCR0-2 checked against pcrs.json), a
#      wallet, a signature checked by an independent BIP-340 verifier, a refresh, a restart of
#      the enclave, a signature after it;
#   7. a transcript with the versions, PCRs and timings: target/nitro-emulate/transcript.txt.
#
# Variables: QEMU (default qemu-system-x86_64), NITRO_BLOBS (required), VHOST_DEVICE_VSOCK (a
# binary to use instead of building one; it must treat CID 3 as the host, see below),
# EMULATE_ACCEL (kvm or tcg; unset: kvm where /dev/kvm is usable, then tcg if KVM gives no
# heartbeat in 120 s), EMULATE_DIR (target/nitro-emulate: the run's state, tools, transcript),
# ENCLAVE_OUT (target/enclave: the image, as make enclave-image), EMULATE_PORT (7301: the parent;
# the recovery cosigner uses EMULATE_PORT+100), BIN (target/debug), EMULATE_MEMORY (QEMU's -m,
# default 1G).
#
# Why vhost-device-vsock is patched: an enclave reaches its parent at CID 3 (AWS's fixed parent
# CID; cosigner-init's heartbeat and the store and KMS channels use it, and they are measured).
# vhost-device-vsock's unix-socket backend forwards only packets for CID 2 (the host) and answers
# from CID 2; its vsock backend would need vsock loopback on this host, which this machine's
# kernel lacks. Setting its host CID to 3 makes the host side the enclave's parent, as on EC2.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROOT=$(pwd)
QEMU=${QEMU:-qemu-system-x86_64}
E=${EMULATE_DIR:-$ROOT/target/nitro-emulate}
BIN=${BIN:-$ROOT/target/debug}
PORT=${EMULATE_PORT:-7301}
MEMORY=${EMULATE_MEMORY:-1G}
MODULE=${COSIGNER_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
GUEST_CID=16
# Where make enclave-image writes: the emulator's image replaces the reference one there, and
# PCR0-2 reported by the emulated NSM are compared with its pcrs.json.
IMAGE=${ENCLAVE_OUT:-$ROOT/target/enclave}
KEY_ARN="arn:aws:kms:us-east-1:111122223333:key/0b5c1f4e-6f0e-4f53-9d0c-5e1d2e6b7a11"
KMS_HOST="kms.emulated.cosigner.test"

missing() {
  echo "nitro-emulate: $*" >&2
  echo "nitro-emulate: see docs/nitro.md, \"Emulator\", for how to get what is missing" >&2
  exit 1
}
now_ms() { date +%s%3N; }
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }

# 1. The tools.
command -v "$QEMU" > /dev/null || missing "QEMU not found: QEMU=$QEMU (QEMU >= 9.2 built with libcbor and gnutls)"
qemu_version=$("$QEMU" --version | head -1)
machines=$("$QEMU" -machine help 2>&1 || true)
if ! grep -q '^nitro-enclave ' <<< "$machines"; then
  missing "$QEMU ($qemu_version) has no nitro-enclave machine: it needs QEMU >= 9.2 configured with libcbor and gnutls (Debian's packages are built without it)"
fi
[ -n "${NITRO_BLOBS:-}" ] || missing "NITRO_BLOBS is not set: a directory with bzImage, bzImage.config, cmdline and nsm.ko"
for blob in bzImage bzImage.config cmdline nsm.ko; do
  [ -f "$NITRO_BLOBS/$blob" ] || missing "$NITRO_BLOBS/$blob is missing (the blobs: bzImage, bzImage.config, cmdline, nsm.ko)"
done
NITRO_BLOBS=$(cd "$NITRO_BLOBS" && pwd)
# EMULATE_ACCEL: kvm (default where /dev/kvm is usable) or tcg. Under nested virtualization KVM
# may stall (seen on a Firecracker guest: the kernel never leaves its decompressor); TCG then
# boots in seconds. arch-capabilities is left out: nested KVM refuses to set that MSR.
accel_kind=${EMULATE_ACCEL:-}
if [ -z "$accel_kind" ]; then
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then accel_kind=kvm; else accel_kind=tcg; fi
fi
case "$accel_kind" in
  kvm) accel=(-enable-kvm -cpu host,-arch-capabilities) ;;
  tcg) accel=(-accel tcg -cpu max) ;;
  *) missing "EMULATE_ACCEL=$accel_kind: expected kvm or tcg" ;;
esac
[ -d "$BIN" ] || missing "no binaries at BIN=$BIN: run make build"
BIN=$(cd "$BIN" && pwd)
[ -x "$BIN/cosigner" ] && [ -x "$BIN/cosigner-parent" ] && [ -x "$BIN/cosigner-enclave" ] ||
  missing "the debug binaries are missing under $BIN: run make build"
[ -x "$BIN/cosigner-kms-standin" ] || missing "$BIN/cosigner-kms-standin is missing: run make build"

# The machine's firmware (bios-microvm.bin, qboot): a QEMU run from its build tree has none of
# its own; Debian's seabios package ships it.
# Debian's qemu-system-data ships the option ROMs (linuxboot_dma.bin) it loads.
firmware=()
for dir in /usr/share/seabios /usr/share/qemu; do
  [ -d "$dir" ] && firmware+=(-L "$dir")
done

case "$E" in
  /*/*) ;;
  *) missing "EMULATE_DIR=$E: expected an absolute directory below /, made for this (it holds run/, removed at each start)" ;;
esac
mkdir -p "$E"
RUN="$E/run"
rm -rf "$RUN"
mkdir -p "$RUN"
transcript="$E/transcript.txt"
: > "$transcript"
note() { echo "$*" | tee -a "$transcript"; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  [ -n "${qemu_pid:-}" ] && kill "$qemu_pid" 2> /dev/null || true
  [ -n "${vhost_pid:-}" ] && kill "$vhost_pid" 2> /dev/null || true
  DEV_DIR="$E/dev" ./scripts/down.sh > /dev/null
}
trap cleanup EXIT

# 2. vhost-device-vsock, patched as explained above.
vhost=${VHOST_DEVICE_VSOCK:-}
if [ -z "$vhost" ]; then
  vhost="$E/tools/vhost-device-vsock"
  if [ ! -x "$vhost" ]; then
    say "Building vhost-device-vsock 0.3.0 (crates.io) with the host at CID 3"
    fetch="$E/tools/fetch"
    mkdir -p "$fetch/src"
    : > "$fetch/src/lib.rs"
    # (an empty [workspace]: target/ is inside this workspace's directory)
    printf '[package]\nname = "fetch-vhost-device-vsock"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nvhost-device-vsock = "=0.3.0"\n[workspace]\n' > "$fetch/Cargo.toml"
    (cd "$fetch" && cargo fetch --quiet)
    crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/vhost-device-vsock-0.3.0.crate | head -1)
    rm -rf "$E/tools/vhost-device-vsock-0.3.0"
    tar -xzf "$crate" -C "$E/tools"
    src="$E/tools/vhost-device-vsock-0.3.0"
    grep -q '^pub(crate) const VSOCK_HOST_CID: u64 = 2;$' "$src/src/vhu_vsock.rs" ||
      missing "vhost-device-vsock 0.3.0 does not define VSOCK_HOST_CID as expected"
    sed -i 's/^pub(crate) const VSOCK_HOST_CID: u64 = 2;$/pub(crate) const VSOCK_HOST_CID: u64 = 3;/' "$src/src/vhu_vsock.rs"
    printf '\n[workspace]\n' >> "$src/Cargo.toml"
    cargo build --quiet --release --locked --manifest-path "$src/Cargo.toml" --target-dir "$E/tools/target"
    cp "$E/tools/target/release/vhost-device-vsock" "$vhost"
  fi
fi

# 3. The KMS stand-in (Recipient, TLS under its own CA), kept for the whole run so that the
# sealed state survives the enclave's restart.
say "Starting the KMS stand-in (Recipient to the attested key, TLS as $KMS_HOST)"
# The parent hands the enclave these credentials (source = "file"); the stand-in recomputes
# every request's SigV4 signature with the secret.
printf 'emulated-parent-secret' > "$RUN/aws-secret"
"$BIN/cosigner-kms-standin" --listen 127.0.0.1:0 --host "$KMS_HOST" --key-arn "$KEY_ARN" \
  --ca-out "$RUN/kms-ca.pem" --access-key-id AKIAEMULATEDPARENT00 \
  --secret-access-key-file "$RUN/aws-secret" > "$RUN/kms.out" 2> "$RUN/kms.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening ' "$RUN/kms.out" 2> /dev/null && break; sleep 0.1; done
kms_addr=$(sed -n 's/^listening //p' "$RUN/kms.out")
[ -n "$kms_addr" ] || missing "the KMS stand-in did not start: $(cat "$RUN/kms.log")"
cat > "$RUN/aws.json" <<JSON
{"Code": "Success", "AccessKeyId": "AKIAEMULATEDPARENT00", "SecretAccessKey": "emulated-parent-secret", "Token": "emulated-session-token", "Expiration": "2099-01-01T00:00:00Z"}
JSON

# 4. The image, with the stand-in's CA as the KMS TLS root. Everything else is the built-in
# configuration of docs/nitro.md (listen vsock:ANY:5000, store vsock:3:5001, KMS vsock:3:8000).
{
  echo 'listen = "vsock:4294967295:5000"'
  echo 'store = "vsock:3:5001"'
  echo
  echo '[sealer]'
  echo 'kind = "kms"'
  echo "key_id = \"$KEY_ARN\""
  echo 'region = "us-east-1"'
  echo 'endpoint = "vsock:3:8000"'
  echo "host = \"$KMS_HOST\""
  echo 'allow_unanchored_state = true'
  echo "tls_roots = ['''"
  cat "$RUN/kms-ca.pem"
  echo "''']"
  echo
  echo '[attester]'
  echo 'kind = "nitro"'
} > "$RUN/enclave.toml"
say "Building the EIF (make enclave-image with NITRO_BLOBS=$NITRO_BLOBS)"
ENCLAVE_CONFIG="$RUN/enclave.toml" ALLOW_PRIVATE_KMS_ROOTS=1 NITRO_BLOBS="$NITRO_BLOBS" ENCLAVE_OUT="$IMAGE" \
  ./scripts/enclave-image.sh | tee "$RUN/enclave-image.log"
eif="$IMAGE/cosigner-enclave.eif"
pcr() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$IMAGE/pcrs.json" "$1"; }
built_pcr0=$(pcr PCR0)
built_pcr1=$(pcr PCR1)
built_pcr2=$(pcr PCR2)

# 5. The recovery cosigner (local, its own token and attester), the parent, the heartbeat.
say "Starting the recovery cosigner (Shard C, local) and the provider's parent"
DEV="$E/dev"
mkdir -p "$DEV"
start_cosigner recovery "$((PORT + 100))" '[enrollment]
mode = "open"'
cat > "$RUN/parent.toml" <<CONF
listen = "127.0.0.1:$PORT"
enclave = "hybrid-vsock:$RUN/vsock.sock:5000"
store_socket = "$RUN/vsock.sock_5001"
database = "$RUN/store.db"
proxy_allow = ["$kms_addr"]

[[proxy]]
listen = "unix:$RUN/vsock.sock_8000"
to = "$kms_addr"

[aws_credentials]
source = "file"
path = "$RUN/aws.json"
CONF
"$BIN/cosigner-parent" run --config "$RUN/parent.toml" >> "$RUN/parent.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$RUN/vsock.sock_5001" ] && break; sleep 0.1; done
[ -S "$RUN/vsock.sock_5001" ] || missing "the parent did not start: $(tail -3 "$RUN/parent.log")"

# nitro-cli's part: answer the init's boot heartbeat (0xB7 on the parent's port 9000) and note
# when it came.
python3 - "$RUN/vsock.sock_9000" "$RUN/heartbeats" <<'PY' &
import os, socket, sys, time
path, log = sys.argv[1], sys.argv[2]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(4)
while True:
    conn, _ = server.accept()
    byte = conn.recv(1)
    if byte == b"\xb7":
        conn.sendall(b"\xb7")
    with open(log, "a") as f:
        f.write(f"{int(time.time() * 1000)} {byte.hex() or 'closed'}\n")
    conn.close()
PY
pids+=($!)
touch "$RUN/heartbeats"

boot() { # starts vhost-device-vsock and QEMU; waits for the heartbeat and an attested answer
  local start heartbeats_before
  heartbeats_before=$(wc -l < "$RUN/heartbeats")
  rm -f "$RUN/vhost.sock"
  "$vhost" --vm "guest-cid=$GUEST_CID,socket=$RUN/vhost.sock,uds-path=$RUN/vsock.sock" \
    >> "$RUN/vhost.log" 2>&1 &
  vhost_pid=$!
  for _ in $(seq 100); do [ -S "$RUN/vhost.sock" ] && break; sleep 0.05; done
  start=$(now_ms)
  "$QEMU" -M "nitro-enclave,vsock=vsock,id=cosigner-emulate" -kernel "$eif" \
    -m "$MEMORY" -smp 2 "${accel[@]}" "${firmware[@]}" -display none -serial "file:$RUN/console.$1.log" \
    -chardev "socket,id=vsock,path=$RUN/vhost.sock" >> "$RUN/qemu.log" 2>&1 &
  qemu_pid=$!
  for _ in $(seq 1200); do
    [ "$(wc -l < "$RUN/heartbeats")" -gt "$heartbeats_before" ] && break
    kill -0 "$qemu_pid" 2> /dev/null || { tail -20 "$RUN/console.$1.log" >&2; missing "QEMU exited before the heartbeat: $(tail -3 "$RUN/qemu.log")"; }
    sleep 0.1
  done
  if [ "$(wc -l < "$RUN/heartbeats")" -le "$heartbeats_before" ]; then
    tail -5 "$RUN/console.$1.log" >&2
    if [ "$accel_kind" = kvm ] && [ -z "${EMULATE_ACCEL:-}" ]; then
      # Nested KVM that stalls (above): say so and boot again in software.
      echo "nitro-emulate: no heartbeat under KVM within 120 s (nested virtualization?): booting under TCG; EMULATE_ACCEL=tcg skips this wait" >&2
      halt
      accel_kind=tcg
      accel=(-accel tcg -cpu max)
      boot "$1"
      return
    fi
    missing "no heartbeat from the enclave within 120 s"
  fi
  heartbeat_ms=$(( $(tail -1 "$RUN/heartbeats" | cut -d' ' -f1) - start ))
  for _ in $(seq 600); do
    "$BIN/cosigner" status > "$RUN/status.json" 2> /dev/null && break
    kill -0 "$qemu_pid" 2> /dev/null || { tail -20 "$RUN/console.$1.log" >&2; missing "QEMU exited: $(tail -3 "$RUN/qemu.log")"; }
    sleep 0.1
  done
  "$BIN/cosigner" status > "$RUN/status.json" ||
    { tail -20 "$RUN/console.$1.log" >&2; missing "the enclave did not answer an attested request within 60 s"; }
  attested_ms=$(( $(now_ms) - start ))
}

halt() { # stops QEMU and the vsock backend (the enclave's memory is gone: a restart)
  kill "$qemu_pid" 2> /dev/null || true
  wait "$qemu_pid" 2> /dev/null || true
  kill "$vhost_pid" 2> /dev/null || true
  wait "$vhost_pid" 2> /dev/null || true
}

# The client: the recovery cosigner's root, QEMU's unsigned documents for the provider, and
# both measurements (the local enclave binary's PCR0, the EIF's PCR0-2).
cat > "$RUN/trust.toml" <<CONF
# Trust file of nitro-emulate: QEMU's emulated NSM signs nothing (testing only, docs/attestation.md).
roots = ["$DEV/recovery/attester/root.pem"]
emulated_nsm = true
max_age_seconds = 300

[[measurement]]
pcr0 = "$built_pcr0"
pcr1 = "$built_pcr1"
pcr2 = "$built_pcr2"

[[measurement]]
pcr0 = "$("$BIN/cosigner-enclave" measure)"
CONF
export COSIGNER_PROVIDER=tcp://127.0.0.1:$PORT
export COSIGNER_RECOVERY=tcp://127.0.0.1:$((PORT + 100))
export COSIGNER_TRUST="$RUN/trust.toml"
export COSIGNER_HOME="$RUN/home"

say "Booting the EIF in QEMU's nitro-enclave machine"
boot first
first_heartbeat_ms=$heartbeat_ms
first_attested_ms=$attested_ms
json_of() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['provider'][sys.argv[2]])" "$RUN/status.json" "$1"; }
reported_pcr0=$(json_of pcr0)
reported_pcr1=$(json_of pcr1)
reported_pcr2=$(json_of pcr2)
echo "heartbeat after ${heartbeat_ms} ms, attested session after ${attested_ms} ms"
python3 -m json.tool "$RUN/status.json"
[ "$reported_pcr0" = "$built_pcr0" ] || missing "PCR0 reported by the emulated NSM ($reported_pcr0) differs from pcrs.json ($built_pcr0)"
[ "$(json_of emulated_nsm)" = True ] || missing "the provider's document is not QEMU's unsigned one: is another cosigner listening on port $PORT?"

say "A wallet with the emulated enclave (Shard B) and the recovery cosigner (Shard C)"
session_start=$(now_ms)
wallet_json=$("$BIN/cosigner" wallet create --recovery-key-out "$RUN/recovery.key" --json)
dkg_ms=$(( $(now_ms) - session_start ))
echo "$wallet_json" | python3 -m json.tool
wallet=$(echo "$wallet_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["wallet_id"])')
key=$(echo "$wallet_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["group_public_key"])')
message=$(printf 'cosigner nitro-emulate' | sha256sum | cut -d' ' -f1)
sign_and_check() {
  local start signature
  start=$(now_ms)
  signature=$("$BIN/cosigner" sign --wallet "$wallet" --message "$message" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["signature"])')
  sign_ms=$(( $(now_ms) - start ))
  python3 scripts/bip340_verify.py "$key" "$message" "$signature"
}
say "Signing with the emulated enclave; an independent BIP-340 verifier checks the signature"
sign_and_check
first_sign_ms=$sign_ms
say "Refreshing the shares (same key, new epoch)"
start=$(now_ms)
"$BIN/cosigner" refresh --wallet "$wallet" --json | python3 -m json.tool
refresh_ms=$(( $(now_ms) - start ))
sign_and_check

say "Restarting the enclave (QEMU stopped and booted again: its memory is gone)"
halt
boot second
second_heartbeat_ms=$heartbeat_ms
second_attested_ms=$attested_ms
sign_and_check
say "The wallet is still there: signed after the restart"

kernel_version=$(file -b "$NITRO_BLOBS/bzImage" | sed -n 's/.*version \([^ ]*\).*/\1/p')
{
  echo "nitro-emulate transcript, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "source: $(git rev-parse HEAD 2> /dev/null || echo unknown)"
  echo "qemu: $qemu_version ($QEMU)"
  echo "kernel: ${kernel_version:-unknown} (bzImage sha256 $(sha256sum "$NITRO_BLOBS/bzImage" | cut -d' ' -f1))"
  echo "nsm.ko: sha256 $(sha256sum "$NITRO_BLOBS/nsm.ko" | cut -d' ' -f1); cmdline: $(cat "$NITRO_BLOBS/cmdline")"
  echo "vhost-device-vsock: $("$vhost" --version 2> /dev/null || echo unknown) (host CID 3)"
  echo "accelerator: ${accel[*]}"
  echo "EIF: $(stat -c %s "$eif") bytes, sha256 $(sha256sum "$eif" | cut -d' ' -f1)"
  echo "attestation: QEMU's unsigned emulated NSM document (module $(json_of module_id)), accepted under emulated_nsm = true"
  echo "PCR0 built:    $built_pcr0"
  echo "PCR0 reported: $reported_pcr0"
  echo "PCR1 built:    $built_pcr1"
  echo "PCR1 reported: $reported_pcr1"
  echo "PCR2 built:    $built_pcr2"
  echo "PCR2 reported: $reported_pcr2"
  echo "first boot: heartbeat ${first_heartbeat_ms} ms after QEMU started, attested session ${first_attested_ms} ms"
  echo "wallet creation (DKG with B and C) ${dkg_ms} ms; first signature ${first_sign_ms} ms; refresh ${refresh_ms} ms"
  echo "restart: heartbeat ${second_heartbeat_ms} ms, attested session ${second_attested_ms} ms; signature after it ${sign_ms} ms"
  echo "wallet $wallet, key $key"
} > "$transcript"
say "nitro-emulate: done; transcript in ${transcript#"$ROOT"/}"
cat "$transcript"
