# Sourced by the scripts (`. scripts/lib.sh`, from the repository root): a private SoftHSM
# configuration and random hex secrets.

# use_softhsm DIR TOKENDIR: writes DIR/softhsm2.conf (file object store, errors only) for the
# tokens under TOKENDIR and exports SOFTHSM2_CONF, so the PKCS#11 module in this shell and its
# children uses only these tokens.
use_softhsm() {
  cat > "$1/softhsm2.conf" <<CONF
directories.tokendir = $2
objectstore.backend = file
log.level = ERROR
CONF
  export SOFTHSM2_CONF="$1/softhsm2.conf"
}

# random_hex BYTES: that many bytes from /dev/urandom as lowercase hex, no newline.
random_hex() {
  head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'
}

# start_cosigner NAME PORT ENROLLMENT-SECTION: a local cosigner under $DEV/NAME (an untrusted
# parent on TCP PORT, its mailbox on PORT+2, relaying to an enclave process with its own SoftHSM
# token and local attester), started in the background with pid files and logs beside its state.
# Needs DEV, BIN and MODULE set; reuses the token, PINs and attester of an earlier run.
start_cosigner() { # name port enrollment-section
  local name=$1 port=$2 enrollment=$3 dir="$DEV/$1"
  mkdir -p "$dir/token" "$dir/store"
  chmod 700 "$dir"
  use_softhsm "$dir" "$dir/token"
  if [ ! -f "$dir/pin" ]; then
    (umask 077; random_hex 16 > "$dir/pin")
    (umask 077; random_hex 16 > "$dir/so-pin")
  fi
  if [ ! -f "$dir/attester/attester.toml" ]; then
    "$BIN/cosigner-enclave" local-attester init --dir "$dir/attester" --token-label "$name" \
      --module "$MODULE" --pin-file "$dir/pin" --so-pin-file "$dir/so-pin" > /dev/null
  fi
  cat > "$dir/enclave.toml" <<CONF
listen = "unix:$dir/enclave.sock"
store = "unix:$dir/store.sock"

[token]
module = "$MODULE"
label = "$name"
pin_file = "$dir/pin"
sealing_key = "cosigner-sealing"

[attester]
kind = "local"
dir = "$dir/attester"

$enrollment
CONF
  cat > "$dir/parent.toml" <<CONF
listen = "127.0.0.1:$port"
enclave = "unix:$dir/enclave.sock"
store_socket = "$dir/store.sock"
database = "$dir/store/store.db"
mailbox_listen = "127.0.0.1:$((port + 2))"
CONF
  for p in parent enclave; do
    if [ -f "$dir/$p.pid" ] && kill -0 "$(cat "$dir/$p.pid")" 2>/dev/null; then
      kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
    fi
  done
  nohup "$BIN/cosigner-parent" run --config "$dir/parent.toml" >> "$dir/parent.log" 2>&1 &
  echo $! > "$dir/parent.pid"
  for _ in $(seq 50); do [ -S "$dir/store.sock" ] && break; sleep 0.1; done
  nohup "$BIN/cosigner-enclave" run --config "$dir/enclave.toml" >> "$dir/enclave.log" 2>&1 &
  echo $! > "$dir/enclave.pid"
  unset SOFTHSM2_CONF
}
