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
# ENCLAVES=N (default 1): N enclave instances on the one token and store, enclave-K.toml,
# enclave-K.sock, enclave-K.pid and enclave-K.log for K = 1..N (start_enclave), their anchors
# shared (`[anchors] shared`, one lock file); the parent spreads clients over them.
# DATABASE (default: the SQLite file DIR/store/store.db): the parent's `database`, e.g. a
# postgres:// URL (make up DB=postgres).
# METRICS_LISTEN (default: none): the parent's `metrics_listen`, IP:PORT of its operator
# listener (GET /metrics, /healthz, /readyz).
start_cosigner() { # name port enrollment-section
  local name=$1 port=$2 enrollment=$3 dir="$DEV/$1" n=${ENCLAVES:-1} k
  case $n in ''|*[!0-9]*|0) echo "ENCLAVES=$n: expected a number from 1" >&2; return 1;; esac
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
  local instance_line="" anchors="" enclave_line="enclave = \"unix:$dir/enclave.sock\""
  if [ "$n" -gt 1 ]; then
    instance_line='instance = @K@'
    anchors="[anchors]
shared = true
lock_file = \"$dir/anchors.lock\""
    enclave_line="enclaves = [$(for k in $(seq "$n"); do printf '"unix:%s/enclave-%s.sock"%s' "$dir" "$k" "$([ "$k" = "$n" ] || echo ', ')"; done)]"
  fi
  cat > "$dir/enclave.toml" <<CONF
listen = "unix:$dir/enclave.sock"
store = "unix:$dir/store.sock"
$instance_line

[token]
module = "$MODULE"
label = "$name"
pin_file = "$dir/pin"
sealing_key = "cosigner-sealing"

[attester]
kind = "local"
dir = "$dir/attester"

$enrollment

$anchors
CONF
  if [ "$n" -gt 1 ]; then
    for k in $(seq "$n"); do
      sed -e "s|^listen = \"unix:$dir/enclave.sock\"|listen = \"unix:$dir/enclave-$k.sock\"|" \
        -e "s|@K@|$k|" "$dir/enclave.toml" > "$dir/enclave-$k.toml"
    done
    rm -f "$dir/enclave.toml"
  fi
  cat > "$dir/parent.toml" <<CONF
listen = "127.0.0.1:$port"
$enclave_line
store_socket = "$dir/store.sock"
database = "${DATABASE:-$dir/store/store.db}"
mailbox_listen = "127.0.0.1:$((port + 2))"
${METRICS_LISTEN:+metrics_listen = \"$METRICS_LISTEN\"}
CONF
  for p in "$dir"/parent.pid "$dir"/enclave.pid "$dir"/enclave-*.pid; do
    if [ -f "$p" ] && kill -0 "$(cat "$p")" 2>/dev/null; then
      kill "$(cat "$p")" 2>/dev/null || true
    fi
    rm -f "$p"
  done
  nohup "$BIN/cosigner-parent" run --config "$dir/parent.toml" >> "$dir/parent.log" 2>&1 &
  echo $! > "$dir/parent.pid"
  for _ in $(seq 50); do [ -S "$dir/store.sock" ] && break; sleep 0.1; done
  if [ "$n" = 1 ]; then
    nohup "$BIN/cosigner-enclave" run --config "$dir/enclave.toml" >> "$dir/enclave.log" 2>&1 &
    echo $! > "$dir/enclave.pid"
  else
    for k in $(seq "$n"); do
      start_enclave "$dir" "$k"
    done
  fi
  unset SOFTHSM2_CONF
}

# start_enclave DIR K: (re)starts enclave instance K of the cosigner under DIR from
# DIR/enclave-K.toml (written by start_cosigner with ENCLAVES > 1), pid in DIR/enclave-K.pid,
# log appended to DIR/enclave-K.log. Needs BIN.
start_enclave() { # dir k
  local dir=$1 k=$2 pid
  if [ -f "$dir/enclave-$k.pid" ]; then
    pid=$(cat "$dir/enclave-$k.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  SOFTHSM2_CONF="$dir/softhsm2.conf" nohup "$BIN/cosigner-enclave" run \
    --config "$dir/enclave-$k.toml" >> "$dir/enclave-$k.log" 2>&1 &
  echo $! > "$dir/enclave-$k.pid"
}

# postgres_bin: the directory of the newest PostgreSQL server binaries of Debian's packages
# (/usr/lib/postgresql/VERSION/bin; initdb and pg_ctl are not on the PATH there).
postgres_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$d" ] || [ ! -x "$d/initdb" ] || [ ! -x "$d/pg_ctl" ]; then
    echo "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (make deps installs Debian's postgresql)" >&2
    return 1
  fi
  echo "$d"
}

# as_postgres CMD...: CMD as the `postgres` system user (made by Debian's package) when this
# shell is root, since initdb and the server refuse to run as root; as this user otherwise.
as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# start_postgres DIR [DATABASE]: a private PostgreSQL cluster in DIR/data, listening only on a
# unix socket in DIR (listen_addresses = ''; no TCP, no system service), made at first use
# (initdb --auth=trust, superuser `cosigner`), started unless it runs, and DATABASE (default
# cosigner) created if absent. Idempotent; a postmaster.pid left by a server that died is
# removed first. Its URL: postgres://cosigner@/DATABASE?host=DIR (DIR absolute). Under root the
# cluster belongs to the `postgres` user, and DIR's parents must let that user through (x).
start_postgres() { # dir [database]
  local dir=$1 db=${2:-cosigner} bin pid
  bin=$(postgres_bin) || return 1
  mkdir -p "$dir" && dir=$(cd "$dir" && pwd) || return 1
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir" && chmod 700 "$dir" || return 1
    if ! runuser -u postgres -- test -w "$dir"; then
      echo "start_postgres: the postgres user cannot reach $dir (a parent directory without x for others?)" >&2
      return 1
    fi
  fi
  if [ ! -s "$dir/data/PG_VERSION" ]; then
    rm -rf "$dir/data"
    if ! (cd "$dir" && as_postgres "$bin/initdb" -D "$dir/data" --username=cosigner --auth=trust \
        --encoding=UTF8 --locale=C) > "$dir/initdb.log" 2>&1; then
      echo "start_postgres: initdb failed:" >&2
      tail -n 5 "$dir/initdb.log" >&2
      return 1
    fi
    cat >> "$dir/data/postgresql.conf" <<CONF
# cosigner's private cluster (scripts/lib.sh start_postgres): a unix socket in $dir only.
listen_addresses = ''
unix_socket_directories = '$dir'
CONF
  fi
  # A server that was killed (or a machine that restarted) leaves postmaster.pid and its socket's
  # lock file behind; their pid may since belong to another process, or to the killed server's
  # zombie not yet reaped, which pg_ctl and the new server would take for a running one.
  if [ -f "$dir/data/postmaster.pid" ]; then
    pid=$(head -n 1 "$dir/data/postmaster.pid")
    case "$(ps -o stat=,comm= -p "$pid" 2>/dev/null | tr -s ' ')" in
      Z*|'') rm -f "$dir/data/postmaster.pid" "$dir"/.s.PGSQL.* ;;
      *postgres) ;;
      *) rm -f "$dir/data/postmaster.pid" "$dir"/.s.PGSQL.* ;;
    esac
  fi
  if ! as_postgres "$bin/pg_ctl" -D "$dir/data" status > /dev/null 2>&1; then
    if ! (cd "$dir" && as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        start) > /dev/null 2>&1; then
      echo "start_postgres: PostgreSQL in $dir did not start:" >&2
      tail -n 5 "$dir/postgres.log" >&2
      return 1
    fi
  fi
  local ready=
  for _ in $(seq 100); do
    if "$bin/pg_isready" -q -h "$dir" -U cosigner -d postgres; then ready=1; break; fi
    sleep 0.1
  done
  if [ -z "$ready" ]; then
    echo "start_postgres: PostgreSQL in $dir does not answer on its socket" >&2
    return 1
  fi
  if [ "$("$bin/psql" -X -q -t -A -h "$dir" -U cosigner -d postgres \
      -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    "$bin/createdb" -h "$dir" -U cosigner "$db" || return 1
  fi
}

# stop_postgres DIR: stops the cluster start_postgres made in DIR, if it runs (its data is kept).
stop_postgres() { # dir
  local dir=$1 bin
  [ -f "$dir/data/postmaster.pid" ] || return 0
  dir=$(cd "$dir" && pwd) || return 1
  bin=$(postgres_bin) || return 1
  if as_postgres "$bin/pg_ctl" -D "$dir/data" status > /dev/null 2>&1; then
    as_postgres "$bin/pg_ctl" -D "$dir/data" -m fast -w stop > /dev/null
  fi
}
