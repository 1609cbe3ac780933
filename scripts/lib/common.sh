# shellcheck shell=bash
# Shared helpers for the scripts in scripts/. Source it; do not run it.
# Sets REPO (the repository root) unless the caller already did.

: "${REPO:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"

# cargo install puts tools (diesel) here; make sure we find them.
PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# A visible header for each step of a script.
step() {
  if [[ -t 2 ]]; then printf '\n\033[1;34m==> %s\033[0m\n' "$*" >&2
  else printf '\n==> %s\n' "$*" >&2; fi
}

# apt_install PKG...: install Debian packages non-interactively (root only).
# Runs `apt-get update` at most once per script run.
_apt_updated=0
apt_install() {
  if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
    die "please install these packages: $*"
  fi
  if [[ $_apt_updated -eq 0 ]]; then
    apt-get update -qq
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# ensure_buf: the buf CLI (and altcha-lib, for the tests) pinned in package.json /
# package-lock.json.
# Sets BUF to its path.
ensure_buf() {
  # shellcheck disable=SC2034 # for the caller
  BUF="$REPO/node_modules/.bin/buf"
  # altcha-lib (the challenge compatibility test) comes from the same package.json.
  if [[ ! -x $BUF || ! -d $REPO/node_modules/altcha-lib ]]; then
    # buf is pinned in package.json and comes from npm; as root, install npm when missing.
    command -v npm >/dev/null || apt_install nodejs npm
    command -v npm >/dev/null || die "npm is needed to install buf (install Node.js)"
    mkdir -p "$REPO/.local"
    # npm ci refuses a lock file that lacks some of buf's per-platform optional packages (the
    # registry reachable when the lock was made had only the Linux ones); then install the
    # same pinned version (package.json says exactly 1.75.0) without touching the lock file.
    if ! (cd "$REPO" && npm ci --no-audit --no-fund >"$REPO/.local/npm-ci.log" 2>&1); then
      log "npm ci failed (see .local/npm-ci.log); using npm install --no-save instead"
      (cd "$REPO" && npm install --no-audit --no-fund --no-save)
    fi
  fi
}

# ensure_diesel: the diesel CLI (2.3, PostgreSQL only). Sets DIESEL.
ensure_diesel() {
  if ! command -v diesel >/dev/null; then
    # diesel_cli links libpq; its headers and link library come from libpq-dev.
    if command -v dpkg >/dev/null && ! dpkg -s libpq-dev >/dev/null 2>&1; then
      apt_install libpq-dev
    fi
    log "installing diesel_cli (takes a few minutes, once)"
    cargo install diesel_cli --version '^2.3' --no-default-features --features postgres --locked
  fi
  # shellcheck disable=SC2034 # for the caller
  DIESEL=$(command -v diesel)
}

# ensure_prometheus: the Prometheus server (and promtool), which the metrics tests run to scrape
# both binaries (tests/tests/metrics.rs). From Debian's `prometheus` package, installed when
# missing.
ensure_prometheus() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null && return 0
  log "installing prometheus (the metrics tests scrape both binaries with it)"
  apt_install prometheus
}

# ensure_faketime: libfaketime, which the relay clock tests preload to set the relay's clock
# ahead (tests/tests/relay_clock.rs). From Debian's `faketime` package, installed when missing.
ensure_faketime() {
  local lib
  for lib in /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1; do
    [[ -e $lib ]] && return 0
  done
  log "installing faketime (libfaketime, for the relay clock tests)"
  apt_install faketime
}

# ensure_nats: nats-server with JetStream, which scripts/dev runs privately and the event tests
# start on free ports (tests/src/nats.rs). From Debian's `nats-server` package (in /usr/sbin),
# installed when missing. Sets NATS_SERVER.
ensure_nats() {
  NATS_SERVER=$(PATH=$PATH:/usr/sbin command -v nats-server || true)
  if [[ -z $NATS_SERVER ]]; then
    log "installing nats-server (domain events go to NATS JetStream)"
    apt_install nats-server
    NATS_SERVER=$(PATH=$PATH:/usr/sbin command -v nats-server)
  fi
  # shellcheck disable=SC2034 # for the caller
  NATS_SERVER=$NATS_SERVER
}

# ensure_nginx: nginx, the load balancer (grpc_pass over HTTP/2) in front of two identity-server
# replicas in the multi-replica drill (tests/tests/drill.rs, scripts/drill). From Debian's
# `nginx` package (/usr/sbin/nginx, with the gRPC and HTTP/2 modules), installed when missing;
# the package is kept from starting a system-wide nginx on port 80, as pg_ensure_binaries does
# for PostgreSQL (the tests run their own, on free ports). Sets NGINX.
ensure_nginx() {
  NGINX=$(PATH=$PATH:/usr/sbin command -v nginx || true)
  if [[ -z $NGINX ]]; then
    log "installing nginx (the drill's load balancer in front of two replicas)"
    # invoke-rc.d asks policy-rc.d; exit code 101 means "action forbidden". (Remove ours after.)
    local policy=/usr/sbin/policy-rc.d ours=0
    if [[ $EUID -eq 0 && ! -e $policy ]]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=1
    fi
    apt_install nginx || { [[ $ours -eq 0 ]] || rm -f "$policy"; die "apt-get install nginx failed"; }
    [[ $ours -eq 0 ]] || rm -f "$policy"
    NGINX=$(PATH=$PATH:/usr/sbin command -v nginx)
  fi
  # shellcheck disable=SC2034 # for the caller
  NGINX=$NGINX
}

# ensure_pgbouncer: PgBouncer, which the pooler tests run in transaction mode in front of the
# test cluster (tests/tests/pgbouncer.rs, tests/src/pgbouncer.rs). From Debian's `pgbouncer`
# package (/usr/sbin/pgbouncer), installed when missing; kept from starting a system-wide
# pgbouncer, as ensure_nginx does for nginx. Sets PGBOUNCER.
ensure_pgbouncer() {
  PGBOUNCER=$(PATH=$PATH:/usr/sbin command -v pgbouncer || true)
  if [[ -z $PGBOUNCER ]]; then
    log "installing pgbouncer (the pooler tests run it in transaction mode)"
    local policy=/usr/sbin/policy-rc.d ours=0
    if [[ $EUID -eq 0 && ! -e $policy ]]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=1
    fi
    apt_install pgbouncer || { [[ $ours -eq 0 ]] || rm -f "$policy"; die "apt-get install pgbouncer failed"; }
    [[ $ours -eq 0 ]] || rm -f "$policy"
    PGBOUNCER=$(PATH=$PATH:/usr/sbin command -v pgbouncer)
  fi
  # shellcheck disable=SC2034 # for the caller
  PGBOUNCER=$PGBOUNCER
}

# ensure_german_locale: the de_DE.UTF-8 locale, in which the error tests start a PostgreSQL
# cluster (lc_messages) to check that errors are recognised by SQLSTATE, not by English text
# (tests/tests/translated_errors.rs). Generated with localedef from Debian's `locales` package
# when missing; PostgreSQL's German messages come with its own package.
ensure_german_locale() {
  locale -a 2>/dev/null | grep -qi '^de_DE\.utf-\?8$' && return 0
  log "generating the de_DE.UTF-8 locale (the translated-error tests)"
  [[ -d /usr/share/i18n/locales ]] || apt_install locales
  [[ $EUID -eq 0 ]] || die "please generate the de_DE.UTF-8 locale (localedef -i de_DE -f UTF-8 de_DE.UTF-8)"
  localedef -i de_DE -c -f UTF-8 de_DE.UTF-8
}
