#!/bin/sh
# The entrypoint of scripts/postgres_image.sh's stand-in for the official PostgreSQL image: the
# part of that image's interface deploy/docker-compose.yml uses, nothing more.
#
# Started as root with the command `postgres` (the default): the data directory ($PGDATA,
# /var/lib/postgresql/data) and the socket directory are given to the user postgres; an empty
# data directory gets a cluster whose superuser is $POSTGRES_USER (default postgres) with the
# password $POSTGRES_PASSWORD (required), scram-sha-256 for every network connection and trust
# for the local socket (which pg_isready and `psql` inside the container use), and the database
# $POSTGRES_DB (default: the user's name); then postgres itself replaces this script, as the
# user postgres, listening on every address. A data directory that holds a cluster is used as it
# is: the variables matter only on the first start. Any other command runs as it is.
set -eu

if [ $# = 0 ]; then
  set -- postgres
elif [ "${1#-}" != "$1" ]; then
  set -- postgres "$@"  # options only: options of postgres
fi
if [ "$1" != postgres ] || [ "$(id -u)" != 0 ]; then
  exec "$@"
fi

PGDATA=${PGDATA:-/var/lib/postgresql/data}
user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}
install -d -o postgres -g postgres -m 0700 "$PGDATA"
chown postgres:postgres "$PGDATA"
chmod 0700 "$PGDATA"
install -d -o postgres -g postgres -m 2775 /var/run/postgresql

as_postgres() {
  setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres: POSTGRES_PASSWORD is not set: the database needs a superuser password" >&2
    exit 1
  fi
  password_file=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
  chown postgres "$password_file"
  as_postgres initdb --pgdata="$PGDATA" --username="$user" --pwfile="$password_file" \
    --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$password_file"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [ "$database" != postgres ]; then
    # Single-user mode: no server listens until the cluster is complete.
    printf 'CREATE DATABASE "%s";\n' "$(printf '%s' "$database" | sed 's/"/""/g')" \
      | as_postgres postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "postgres: initialised $PGDATA (user $user, database $database)" >&2
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
