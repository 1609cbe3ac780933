# shellcheck shell=bash
# Private PostgreSQL clusters for development and tests. Source it; do not run it.
#
#   pg_ensure_binaries     find (or, as root, install) the server binaries; exports PG_BINDIR
#   pg_start_private NAME  start (initdb once) the cluster in $REPO/.local/pg/NAME, exports
#                          DATABASE_URL; sets PG_PORT
#   pg_stop_private NAME   stop it (fast shutdown)
#
# A private cluster listens on 127.0.0.1 only, on a port of its own, with trust authentication
# for the `postgres` role. It never touches a system-wide PostgreSQL (for example the one on
# port 5432). As root, the cluster runs as the `postgres` OS user, because initdb and the server
# refuse to run as root.

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

pg_ensure_binaries() {
  local dir
  # 1. Already known (from the caller's environment or an earlier call).
  if [[ -n ${PG_BINDIR:-} && -x $PG_BINDIR/initdb ]]; then export PG_BINDIR; return 0; fi
  # 2. pg_config names the bin directory of the installed version (if its server is installed).
  if dir=$(pg_config --bindir 2>/dev/null) && [[ -x $dir/initdb ]]; then
    export PG_BINDIR=$dir; return 0
  fi
  # 3. The newest Debian-style /usr/lib/postgresql/<version>/bin that has initdb.
  dir=$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
  if [[ -x $dir ]]; then export PG_BINDIR=${dir%/initdb}; return 0; fi

  [[ $EUID -eq 0 ]] ||
    die "PostgreSQL server binaries (initdb, pg_ctl) not found; install them, e.g. 'sudo apt-get install postgresql', or set PG_BINDIR"
  log "installing PostgreSQL server binaries"
  # Keep the package from starting a system-wide server: invoke-rc.d asks policy-rc.d, and
  # exit code 101 means "action forbidden". (Remove our policy file afterwards.)
  local policy=/usr/sbin/policy-rc.d ours=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=1
  fi
  apt_install postgresql || { [[ $ours -eq 0 ]] || rm -f "$policy"; die "apt-get install postgresql failed"; }
  [[ $ours -eq 0 ]] || rm -f "$policy"
  unset PG_BINDIR
  dir=$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
  [[ -x $dir ]] || die "installed postgresql, but still no initdb under /usr/lib/postgresql"
  export PG_BINDIR=${dir%/initdb}
}

# _pg_owner CMD...: run a command as the cluster owner (postgres when we are root).
_pg_owner() {
  if [[ $EUID -eq 0 ]]; then
    su postgres -s /bin/bash -c "cd / && $(printf '%q ' "$@")"
  else
    "$@"
  fi
}

# _pg_free_port: print a TCP port nobody listens on at 127.0.0.1 (outside the ephemeral range).
_pg_free_port() {
  local port i
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + RANDOM % 12000))
    # A refused connection means the port is free.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"; return 0
    fi
  done
  die "no free TCP port found"
}

pg_start_private() {
  local name=${1:?usage: pg_start_private NAME}
  local dir="$REPO/.local/pg/$name"
  local data="$dir/data" run="$dir/run" dbname=postgres
  [[ $name == dev ]] && dbname=identity_dev
  pg_ensure_binaries

  mkdir -p "$run"
  chmod 1777 "$run"  # the socket directory: writable by the server whoever runs it
  if [[ $EUID -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user (apt-get install postgresql)"
    chown -R postgres:postgres "$dir"
    # The server must be able to reach its data directory through every parent directory.
    su postgres -s /bin/bash -c "test -x $(printf '%q' "$dir")" ||
      die "the postgres user cannot reach $dir (a parent directory is not world-searchable)"
  fi

  if [[ ! -f $data/PG_VERSION ]]; then
    log "pg: creating cluster '$name' in $data"
    _pg_owner "$PG_BINDIR/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C \
      --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    {
      echo "# added by scripts/lib/pg.sh"
      echo "listen_addresses = '127.0.0.1'"
      echo "max_connections = 300"  # tests open many connections in parallel
      if [[ $name != dev ]]; then
        # Throwaway cluster: trade durability for speed.
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
      fi
    } >>"$data/postgresql.conf"
  fi

  if _pg_owner "$PG_BINDIR/pg_ctl" status -D "$data" >/dev/null 2>&1; then
    # Already running: its port is line 4 of postmaster.pid.
    PG_PORT=$(sed -n 4p "$data/postmaster.pid")
    log "pg: cluster '$name' already running on 127.0.0.1:$PG_PORT"
  else
    # Keep the recorded port while it is free, so URLs stay the same between runs.
    PG_PORT=$(cat "$dir/port" 2>/dev/null || true)
    if [[ -z $PG_PORT ]] || (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null; then
      PG_PORT=$(_pg_free_port)
    fi
    echo "$PG_PORT" >"$dir/port"
    # Unix socket in run/ (we connect over TCP; a socket path is limited to ~100 bytes, so
    # without one when the repository path is too long).
    local sock=$run
    ((${#sock} < 90)) || sock=
    log "pg: starting cluster '$name' on 127.0.0.1:$PG_PORT (log: $dir/postgres.log)"
    _pg_owner "$PG_BINDIR/pg_ctl" start -D "$data" -w -t 60 -l "$dir/postgres.log" \
      -o "-p $PG_PORT -k '$sock'" >/dev/null || { tail -n 20 "$dir/postgres.log" >&2; die "pg_ctl start failed"; }
  fi
  "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 30 || die "cluster '$name' is not ready"

  if [[ $dbname != postgres ]] && [[ -z $("$PG_BINDIR/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U postgres \
      -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$dbname'") ]]; then
    "$PG_BINDIR/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$dbname"
  fi
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/$dbname"
}

pg_stop_private() {
  local name=${1:?usage: pg_stop_private NAME}
  local data="$REPO/.local/pg/$name/data"
  [[ -f $data/postmaster.pid ]] || return 0
  pg_ensure_binaries
  _pg_owner "$PG_BINDIR/pg_ctl" status -D "$data" >/dev/null 2>&1 || return 0
  log "pg: stopping cluster '$name'"
  _pg_owner "$PG_BINDIR/pg_ctl" stop -D "$data" -m fast -w >/dev/null
}
