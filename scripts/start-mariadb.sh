#!/usr/bin/env bash
# Starts a private MariaDB server for the proxy end-to-end test (tests/tests/proxy.rs), and
# prints the line that tells the tests where it is:
#
#   eval "$(bash scripts/start-mariadb.sh)"    # sets MESH_TEST_MARIADB=127.0.0.1:33306
#
# Installs mariadb-server and mariadb-client from Debian's packages if they are missing, keeps
# its data directory, socket, pid file and log under .cache/mariadb, listens on 127.0.0.1 only
# (port MESH_MARIADB_PORT, default 33306), and creates the test user `mesh` (password `mesh`,
# from 127.0.0.1) with the database `mesh`. Idempotent: a server already answering is left
# running. Progress goes to stderr; only the export line goes to stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port="${MESH_MARIADB_PORT:-33306}"
dir="$root/.cache/mariadb"
datadir="$dir/data"
socket="$dir/mariadb.sock"
pidfile="$dir/mariadb.pid"
log="$dir/mariadb.log"

say() { echo "start-mariadb: $*" >&2; }

if ! command -v mariadbd >/dev/null 2>&1 && ! [ -x /usr/sbin/mariadbd ] \
  || ! command -v mariadb >/dev/null 2>&1; then
  say "installing mariadb-server and mariadb-client"
  apt-get update >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    mariadb-server mariadb-client >&2
  # The package starts its own server on the default port where there is an init system;
  # this script runs its own instead and leaves that one alone.
fi
mariadbd=$(command -v mariadbd || echo /usr/sbin/mariadbd)

ping() {
  mariadb-admin --no-defaults --protocol=socket --socket="$socket" -uroot ping >/dev/null 2>&1
}

mkdir -p "$dir"
if ping; then
  say "already running on 127.0.0.1:$port"
else
  if ! [ -d "$datadir/mysql" ]; then
    say "initializing $datadir"
    rm -rf "$datadir"
    mariadb-install-db --no-defaults --user=root --datadir="$datadir" \
      --auth-root-authentication-method=socket --skip-test-db >"$dir/install.log" 2>&1 \
      || { cat "$dir/install.log" >&2; exit 1; }
  fi
  say "starting mariadbd on 127.0.0.1:$port"
  # --no-defaults: nothing from /etc/mysql; the server is wholly described here.
  nohup "$mariadbd" --no-defaults --user=root --datadir="$datadir" \
    --bind-address=127.0.0.1 --port="$port" --socket="$socket" --pid-file="$pidfile" \
    --log-error="$log" --skip-name-resolve --innodb-buffer-pool-size=32M \
    >/dev/null 2>&1 </dev/null &
  for _ in $(seq 1 600); do
    ping && break
    sleep 0.1
  done
  if ! ping; then
    say "mariadbd did not answer within 60s; its log:"
    tail -n 50 "$log" >&2 || true
    exit 1
  fi
fi

mariadb --no-defaults --protocol=socket --socket="$socket" -uroot <<'SQL'
CREATE DATABASE IF NOT EXISTS mesh;
CREATE USER IF NOT EXISTS 'mesh'@'127.0.0.1' IDENTIFIED BY 'mesh';
GRANT ALL PRIVILEGES ON mesh.* TO 'mesh'@'127.0.0.1';
SQL
say "ready: user mesh/mesh, database mesh, 127.0.0.1:$port"
echo "export MESH_TEST_MARIADB=127.0.0.1:$port"
