#!/bin/sh
# support-entrypoint: `postgres [args]`, `redis-server [args]`, `serve <config>`,
# `garbage-collect <config>`, or any other command (run as is).
set -eu

case "${1:-}" in
postgres)
  shift
  : "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "support-entrypoint: set POSTGRES_PASSWORD" >&2
    exit 1
  fi
  mkdir -p "$PGDATA" /run/postgresql
  chown postgres:postgres "$PGDATA" /run/postgresql
  chmod 700 "$PGDATA"
  as_postgres="setpriv --reuid=postgres --regid=postgres --init-groups"
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    $as_postgres initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" \
      --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
      echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" |
        $as_postgres postgres --single -D "$PGDATA" -jE postgres >/dev/null
    fi
    echo "support-entrypoint: initialised $PGDATA (database $POSTGRES_DB)"
  fi
  exec $as_postgres postgres -D "$PGDATA" -c listen_addresses='*' "$@"
  ;;
serve | garbage-collect)
  exec docker-registry "$@"
  ;;
*)
  exec "$@"
  ;;
esac
