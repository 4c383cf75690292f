#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for the storage tests; print the variables to export.
#
#   eval "$(bash scripts/ci_postgres.sh)"       # sets EVALKIT_TEST_PG_URL and EVALKIT_TEST_PG_DIR
#   bash scripts/ci_postgres.sh stop            # stops the cluster in $EVALKIT_TEST_PG_DIR, removes it
#
# Installs Debian's postgresql if no initdb is found (needs root). The cluster lives in a
# fresh temp dir, listens on 127.0.0.1 only, on a free port, runs as a non-root user
# (postgres, or a system user created for it), with a random password (scram-sha-256).
# Only the export lines go to stdout; progress goes to stderr.
set -euo pipefail

say() { echo "ci_postgres: $*" >&2; }

as_user() {
  local user=$1
  shift
  if [ "$(id -u)" -ne 0 ]; then
    "$@"
  elif command -v runuser >/dev/null 2>&1; then
    runuser -u "$user" -- "$@"
  else
    su -s /bin/sh "$user" -c "$(printf '%q ' "$@")"
  fi
}

find_bin() {
  local name=$1 found
  found=$(ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$found" ]; then
    echo "$found"
  elif command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
  fi
}

if [ "${1:-}" = "stop" ]; then
  dir=${EVALKIT_TEST_PG_DIR:?EVALKIT_TEST_PG_DIR is not set}
  pg_ctl=$(find_bin pg_ctl)
  owner=$(stat -c %U "$dir")
  as_user "$owner" "$pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
  rm -rf "$dir"
  say "stopped and removed $dir"
  exit 0
fi

if [ -z "$(find_bin initdb)" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "PostgreSQL is not installed and this is not root: apt-get install postgresql first"
    exit 1
  fi
  say "installing Debian's postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi
initdb=$(find_bin initdb)
pg_ctl=$(find_bin pg_ctl)
psql_bin=$(find_bin psql)

user=$(id -un)
if [ "$(id -u)" -eq 0 ]; then
  if id postgres >/dev/null 2>&1; then
    user=postgres
  else
    id evalkit-pg >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin evalkit-pg
    user=evalkit-pg
  fi
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/evalkit-pg.XXXXXX")
chmod 700 "$dir"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
printf '%s\n' "$password" >"$dir/pwfile"
chown -R "$user" "$dir"

say "initdb in $dir as $user"
as_user "$user" "$initdb" -D "$dir/data" -U evalkit --pwfile="$dir/pwfile" \
  --auth-host=scram-sha-256 --auth-local=scram-sha-256 -E UTF8 >"$dir/initdb.log" 2>&1 ||
  { cat "$dir/initdb.log" >&2; exit 1; }
rm -f "$dir/pwfile"
as_user "$user" "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=on -c synchronous_commit=on -c max_connections=200" \
  start >&2 || { cat "$dir/server.log" >&2; exit 1; }

PGPASSWORD=$password "$psql_bin" -h 127.0.0.1 -p "$port" -U evalkit -d postgres -q \
  -c "CREATE DATABASE evalkit_test" >&2
say "PostgreSQL listening on 127.0.0.1:$port"
echo "export EVALKIT_TEST_PG_URL=postgresql://evalkit:$password@127.0.0.1:$port/evalkit_test"
echo "export EVALKIT_TEST_PG_DIR=$dir"
