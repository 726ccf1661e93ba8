#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on localhost for the storage tests and print the URL to export.
#
#   eval "$(bash .ci/postgres.sh)"        # sets S2M_TEST_POSTGRES_URL for this shell
#   bash .ci/postgres.sh stop             # stops the server again
#
# Installs Debian's postgresql when it is missing (needs root), keeps its cluster in $S2M_PG_DIR
# (default /tmp/s2m-postgres), listens on 127.0.0.1:$S2M_PG_PORT (default 54329), and creates role
# and database s2m / s2m_test (the role may create databases: each test makes and drops its own).
# Idempotent: a server already running there is reused. Logs go to stderr; only the export line to stdout.
set -euo pipefail

DIR=${S2M_PG_DIR:-/tmp/s2m-postgres}
PORT=${S2M_PG_PORT:-54329}
ROLE=s2m
PASSWORD=s2m
DB=s2m_test
log() { echo "postgres.sh: $*" >&2; }

find_bin() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    done
    return 1
}

if ! PGBIN=$(find_bin); then
    if [ "$(id -u)" -ne 0 ]; then
        log "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
        exit 1
    fi
    log "installing Debian's postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    PGBIN=$(find_bin)
fi

# The server refuses to run as root: run it as the `postgres` user when we are root.
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
    as_owner() { runuser -u postgres -- "$@"; }
    OWNER=postgres
else
    as_owner() { "$@"; }
    OWNER=$(id -un)
fi

if [ "${1:-start}" = "stop" ]; then
    as_owner "$PGBIN/pg_ctl" -D "$DIR/data" -m fast stop >&2 || true
    exit 0
fi

mkdir -p "$DIR"
chown "$OWNER" "$DIR"
if [ ! -f "$DIR/data/PG_VERSION" ]; then
    log "creating a cluster in $DIR/data"
    as_owner "$PGBIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 >&2
fi
if ! as_owner "$PGBIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
    log "starting the server on 127.0.0.1:$PORT"
    as_owner "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >&2
fi

psql_su() { as_owner "$PGBIN/psql" -h "$DIR" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql_su -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != "1" ]; then
    psql_su -d postgres -c "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'" >&2
fi
if [ "$(psql_su -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
    psql_su -d postgres -c "CREATE DATABASE $DB OWNER $ROLE" >&2
fi
log "ready"
echo "export S2M_TEST_POSTGRES_URL=postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
