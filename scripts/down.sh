#!/usr/bin/env bash
# `make down`: stop the local deployment started by `make up` (its state under .dev/, or
# $DEV_DIR, is kept), and its PostgreSQL cluster if `make up DB=postgres` started one.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
DEV="${DEV_DIR:-.dev}"
for pidfile in "$DEV"/*/parent.pid "$DEV"/*/enclave.pid "$DEV"/*/enclave-*.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null && echo "stopped $(basename "$(dirname "$pidfile")") $(basename "$pidfile" .pid) ($pid)"
  rm -f "$pidfile"
done
# After the parents (a parent whose database went first would log errors until killed); a fast
# shutdown ends any session still open.
if [ -f "$DEV/postgres/data/postmaster.pid" ]; then
  stop_postgres "$DEV/postgres" && echo "stopped postgres ($DEV/postgres)"
fi
exit 0
