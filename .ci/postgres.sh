#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the gradkit tests marked `postgres`.
#
#   eval "$(bash .ci/postgres.sh)"     # sets GRADKIT_TEST_POSTGRES_URL
#
# Installs PostgreSQL from the Debian packages if it is missing (apt-get), creates a cluster
# under $GRADKIT_PG_DIR (default /tmp/gradkit-pg), starts it on port $GRADKIT_PG_PORT
# (default 55432, loopback only), creates user and database "gradkit", and prints one line on
# stdout: export GRADKIT_TEST_POSTGRES_URL=postgresql+psycopg2://... (and
# GRADKIT_TEST_POSTGRES_SECRET_URL, a plain postgresql:// URL of a role with a password used
# nowhere else, for the test that no file of a run holds it). Everything else goes to
# stderr. Running it again reuses the running server. It also prints
# GRADKIT_TEST_POSTGRES_CTL (this script with the folder and port), which the outage test uses
# to stop and restart the server mid-run:
#   bash .ci/postgres.sh stop       # stop the server (fast shutdown)
#   bash .ci/postgres.sh start      # start it again (same data, port and settings)
set -euo pipefail

ACTION="${1:-setup}"

PG_DIR="${GRADKIT_PG_DIR:-/tmp/gradkit-pg}"
PG_PORT="${GRADKIT_PG_PORT:-55432}"
PG_USER=gradkit
PG_PASSWORD=gradkit
PG_DB=gradkit
# A second role and database whose password appears nowhere else, so that a test can grep every
# file a comparison writes for it (the first password equals the user and database names).
PG_SECRET_USER=gradkit_leakcheck
PG_SECRET_PASSWORD=Leak-Check-Pw-5e8a1c
PG_SECRET_DB=gradkit_leakcheck

log() { echo "[postgres.sh] $*" >&2; }

find_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; fi
}

BINDIR=$(find_bindir)
if [ -z "$BINDIR" ]; then
  log "installing PostgreSQL from the Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update >&2
  $SUDO apt-get install -y postgresql >&2
  BINDIR=$(find_bindir)
fi
if [ -z "$BINDIR" ]; then
  log "PostgreSQL binaries not found after installing; giving up"
  exit 1
fi
log "using $BINDIR"

# The server refuses to run as root: use the 'postgres' system user when we are root.
if [ "$(id -u)" = 0 ]; then
  if ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir "$PG_DIR" --shell /bin/bash postgres
  fi
  RUN_AS=(runuser -u postgres --)
else
  RUN_AS=()
fi

mkdir -p "$PG_DIR"
if [ "$(id -u)" = 0 ]; then chown postgres "$PG_DIR"; fi
DATA="$PG_DIR/data"
LOGFILE="$PG_DIR/server.log"

if [ ! -f "$DATA/PG_VERSION" ]; then
  log "initialising a cluster in $DATA"
  "${RUN_AS[@]}" "$BINDIR/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=md5 \
    -E UTF8 >&2
fi

start_server() {
  "${RUN_AS[@]}" "$BINDIR/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c max_connections=100" start >&2
}

case "$ACTION" in
  stop)
    log "stopping the server"
    "${RUN_AS[@]}" "$BINDIR/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >&2
    exit 0 ;;
  start)
    log "starting the server again"
    start_server
    exit 0 ;;
  setup) ;;
  *) log "unknown action '$ACTION' (use setup, stop or start)"; exit 2 ;;
esac

if "${RUN_AS[@]}" "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  log "server already running"
else
  log "starting the server on 127.0.0.1:$PG_PORT (log: $LOGFILE)"
  start_server
fi

psql_admin() {
  "${RUN_AS[@]}" "$BINDIR/psql" -h "$PG_DIR" -p "$PG_PORT" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -tA "$@"
}

if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='$PG_USER'")" != 1 ]; then
  psql_admin -c "CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='$PG_DB'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE $PG_DB OWNER $PG_USER" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='$PG_SECRET_USER'")" != 1 ]; then
  psql_admin -c "CREATE ROLE $PG_SECRET_USER LOGIN PASSWORD '$PG_SECRET_PASSWORD'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='$PG_SECRET_DB'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE $PG_SECRET_DB OWNER $PG_SECRET_USER" >&2
fi
log "ready"
echo "export GRADKIT_TEST_POSTGRES_URL=postgresql+psycopg2://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
echo "export GRADKIT_TEST_POSTGRES_SECRET_URL=postgresql://$PG_SECRET_USER:$PG_SECRET_PASSWORD@127.0.0.1:$PG_PORT/$PG_SECRET_DB"
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
echo "export GRADKIT_TEST_POSTGRES_CTL='env GRADKIT_PG_DIR=$PG_DIR GRADKIT_PG_PORT=$PG_PORT bash $SELF'"
