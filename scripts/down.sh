#!/usr/bin/env bash
# `make down`: stop the local deployment started by `make up` (its state under .dev/, or
# $DEV_DIR, is kept).
set -uo pipefail
cd "$(dirname "$0")/.."
DEV="${DEV_DIR:-.dev}"
for pidfile in "$DEV"/*/parent.pid "$DEV"/*/enclave.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null && echo "stopped $(basename "$(dirname "$pidfile")") $(basename "$pidfile" .pid) ($pid)"
  rm -f "$pidfile"
done
exit 0
