#!/usr/bin/env bash
# Start, stop and check the real storage servers that the test suite talks to, on
# loopback only, without systemd:
#
#   bash scripts/services.sh start [pg mysql cassandra seaweedfs moto]   (no names: all)
#   bash scripts/services.sh status [names...]   one line per service; non-zero if one is down
#   bash scripts/services.sh stop [names...]     stops the servers this script started
#
# Addresses, ports and credentials come from scripts/services.env (the test fixtures read
# the same file); a variable already set in the environment wins over the file.  A server
# that already answers on its port is reused, not restarted.  Servers keep their data
# between runs under the state dir ${CLOUDCOTE_SERVICES_DIR:-<repo>/.services}, one
# directory per server, each with its log in <name>/log.  `weed` and `moto_server` and the
# Python used for the readiness checks come from ${CLOUDCOTE_VENV:-<repo>/.venv}
# (scripts/bootstrap.sh fills it).  PostgreSQL and MariaDB come from Debian's packages
# (installed here with apt-get when missing), Cassandra 5.0 from Maven Central
# (scripts/cassandra/pom.xml, cached in ~/.m2) and runs on Java 17.  `start` also installs
# Debian's isync when missing: not a server but mbsync, a real IMAP client the tests drive;
# and Debian's swaks, a real LMTP client.
#
# A second, private set beside the usual one (as tests/test_services_script.py runs):
# set CLOUDCOTE_SERVICES_DIR to another state dir and every address of services.env
# (CLOUDCOTE_PG_DSN, CLOUDCOTE_MYSQL_DSN, CLOUDCOTE_CASSANDRA_HOSTS,
# CLOUDCOTE_SEAWEEDFS_ENDPOINT, CLOUDCOTE_MOTO_ENDPOINT) and the ports below to free ones,
# e.g. CLOUDCOTE_SERVICES_DIR=/tmp/svc CLOUDCOTE_MOTO_ENDPOINT=http://127.0.0.1:21055
# bash scripts/services.sh start moto.
#
# Extra knobs (environment, rarely needed; e.g. to run a second set beside another):
#   CLOUDCOTE_CASSANDRA_STORAGE_PORT (7000), CLOUDCOTE_CASSANDRA_JMX_PORT (7199),
#   CLOUDCOTE_CASSANDRA_HEAP (1G), CLOUDCOTE_CASSANDRA_TIMEOUT (300 s),
#   CLOUDCOTE_CASSANDRA_JAVA (path of a Java 17 or 11 `java`),
#   CLOUDCOTE_CASSANDRA_JVM_OPTS (extra JVM options, split on spaces),
#   CLOUDCOTE_SEAWEEDFS_MASTER_PORT (9333), CLOUDCOTE_SEAWEEDFS_VOLUME_PORT (9340),
#   CLOUDCOTE_SEAWEEDFS_FILER_PORT (8888), CLOUDCOTE_SEAWEEDFS_ADMIN_PORT (23646)
#   (SeaweedFS's gRPC ports are these and its S3 port plus 10000),
#   CLOUDCOTE_SPAWN_TIMEOUT (30 s for a launched server's process to become the server).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ENV_FILE=$HERE/services.env
ALL_SERVICES=(pg mysql cassandra seaweedfs moto)

# --- configuration: services.env, with the environment taking precedence ---------------
declare -A _preset=()
while IFS= read -r _line || [ -n "$_line" ]; do
  [[ $_line =~ ^([A-Za-z_][A-Za-z0-9_]*)= ]] || continue
  _key=${BASH_REMATCH[1]}
  if [ -n "${!_key+set}" ]; then _preset[$_key]=${!_key}; fi
done < "$ENV_FILE"
set -a
# shellcheck source=scripts/services.env
. "$ENV_FILE"
set +a
for _key in "${!_preset[@]}"; do export "$_key=${_preset[$_key]}"; done
unset _line _key _preset

die() { echo "services.sh: $*" >&2; exit 1; }

# postgresql://user:password@host:port/db  ->  globals U P H PORT DB
parse_dsn() {
  [[ $1 =~ ^[a-z]+://([^:@/]+)(:([^@/]*))?@([^:/]+):([0-9]+)/([^?/]+) ]] || die "cannot parse DSN: $1"
  U=${BASH_REMATCH[1]} P=${BASH_REMATCH[3]} H=${BASH_REMATCH[4]} PORT=${BASH_REMATCH[5]} DB=${BASH_REMATCH[6]}
}
parse_dsn "$CLOUDCOTE_PG_DSN"
PG_USER=$U PG_PASS=$P PG_HOST=$H PG_PORT=$PORT PG_DB=$DB
parse_dsn "$CLOUDCOTE_MYSQL_DSN"
MY_USER=$U MY_PASS=$P MY_HOST=$H MY_PORT=$PORT MY_DB=$DB
_first=${CLOUDCOTE_CASSANDRA_HOSTS%%[,;]*}   # the first of a "," or ";" separated list
CASS_HOST=${_first%:*} CASS_PORT=${_first##*:}
[[ $CASS_PORT =~ ^[0-9]+$ && $_first == *:* ]] || CASS_PORT=9042
_hp=${CLOUDCOTE_SEAWEEDFS_ENDPOINT#*://}; _hp=${_hp%%/*}
SW_HOST=${_hp%:*} SW_PORT=${_hp##*:}
_hp=${CLOUDCOTE_MOTO_ENDPOINT#*://}; _hp=${_hp%%/*}
MOTO_HOST=${_hp%:*} MOTO_PORT=${_hp##*:}
unset _first _hp U P H PORT DB
for _h in "$PG_HOST" "$MY_HOST" "$CASS_HOST" "$SW_HOST" "$MOTO_HOST"; do
  [[ $_h == 127.* ]] || die "only loopback (127.x.x.x) addresses are allowed, got $_h"
done
CASS_STORAGE_PORT=${CLOUDCOTE_CASSANDRA_STORAGE_PORT:-7000}
CASS_JMX_PORT=${CLOUDCOTE_CASSANDRA_JMX_PORT:-7199}
CASS_HEAP=${CLOUDCOTE_CASSANDRA_HEAP:-1G}
CASS_TIMEOUT=${CLOUDCOTE_CASSANDRA_TIMEOUT:-300}
SW_MASTER_PORT=${CLOUDCOTE_SEAWEEDFS_MASTER_PORT:-9333}
SW_VOLUME_PORT=${CLOUDCOTE_SEAWEEDFS_VOLUME_PORT:-9340}
SW_FILER_PORT=${CLOUDCOTE_SEAWEEDFS_FILER_PORT:-8888}
SW_ADMIN_PORT=${CLOUDCOTE_SEAWEEDFS_ADMIN_PORT:-23646}   # listens even with -admin.ui=false

STATE=${CLOUDCOTE_SERVICES_DIR:-$REPO/.services}
VENV=${CLOUDCOTE_VENV:-$REPO/.venv}
PY=$VENV/bin/python

IS_ROOT=0; [ "$(id -u)" = 0 ] && IS_ROOT=1

# --- small helpers ----------------------------------------------------------------------
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

port_open() {  # host port: true when something accepts TCP connections there
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

pid_alive() {  # pidfile expected-word: true when the pid in it runs a matching command
  local pid cmdline
  [ -s "$1" ] || return 1
  pid=$(head -n1 "$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cmdline=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || return 1
  # a fork of this script (not a server) would match a word found in our own arguments
  [ "$cmdline" != "$SELF_CMDLINE" ] && [[ $cmdline == *"$2"* ]]
}

# What /proc/PID/cmdline shows for this script, and for every child forked by `cmd &`
# until that child has exec'd its program: a pid read from $! runs the script, not the
# server, for a moment (longer on a loaded machine), so it is judged only after the exec.
SELF_CMDLINE=$(tr '\0' ' ' < "/proc/$$/cmdline")

# Start a server in its own session (so that it outlives us), its output appended to
# logfile, and wait until the forked child has exec'd it: true once the pid runs a command
# naming expected-word (then the pid is in pidfile), false (the child killed) if it exited
# first, ran something else, or never exec'd within CLOUDCOTE_SPAWN_TIMEOUT seconds (30).
spawn() {  # pidfile expected-word logfile command...
  local pidfile=$1 word=$2 log=$3 pid stat cmdline first deadline
  shift 3
  setsid "$@" </dev/null >>"$log" 2>&1 9>&- &
  pid=$!
  echo "$pid" > "$pidfile"
  deadline=$((SECONDS + ${CLOUDCOTE_SPAWN_TIMEOUT:-30}))
  while :; do
    if ! read -r stat 2>/dev/null < "/proc/$pid/stat" || [[ ${stat##*) } == [ZX]* ]]; then
      echo "services.sh: $word exited at once (pid $pid)" >&2
      break
    fi
    # Empty while an exec is under way (the new program's arguments are not in place yet);
    # setsid and env (the wrappers used here) are stages on the way to the server.
    cmdline=$(tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline") || cmdline=""
    first=${cmdline%% *}
    if [ -n "$cmdline" ] && [ "$cmdline" != "$SELF_CMDLINE" ] \
        && [ "${first##*/}" != setsid ] && [ "${first##*/}" != env ]; then
      [[ $cmdline == *"$word"* ]] && return 0
      echo "services.sh: pid $pid runs something else than $word: $cmdline" >&2
      break
    fi
    if ((SECONDS >= deadline)); then
      echo "services.sh: $word: pid $pid has not exec'd after ${CLOUDCOTE_SPAWN_TIMEOUT:-30}s" >&2
      break
    fi
    sleep 0.02
  done
  kill -KILL "$pid" 2>/dev/null || true   # our own child: leave no server behind unrecorded
  rm -f "$pidfile"
  return 1
}

# Run a command as an unprivileged OS user when we are root (postgres refuses root).
as_user() {
  local user=$1; shift
  if [ "$IS_ROOT" = 1 ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

# A service's directory, owned by the OS user that runs its server (when we are root).
# That user must be able to reach it: if a parent directory is closed to others (e.g. a
# clone under /root), give the parents the search (x) bit only, and say so.
make_service_dir() {
  local dir=$1 user=${2:-}
  mkdir -p "$dir"
  [ -n "$user" ] && [ "$IS_ROOT" = 1 ] || return 0
  chown -R "$user:" "$dir"
  runuser -u "$user" -- test -x "$dir" && return 0
  local parts part d=""
  IFS=/ read -ra parts <<< "${dir#/}"
  for part in "${parts[@]}"; do   # top down: the first closed one hides the rest
    d+=/$part
    if ! runuser -u "$user" -- test -x "$d"; then
      echo "services.sh: note: chmod o+x $d so that user $user can reach $dir" >&2
      chmod o+x "$d"
    fi
  done
}

log_tail() {  # name logfile...
  local f
  for f in "${@:2}"; do
    [ -f "$f" ] || continue
    echo "----- $1: last lines of $f -----" >&2
    tail -n 60 "$f" >&2
  done
  echo "----- end of $1 log -----" >&2
}

need_venv_tool() {
  [ -x "$1" ] || die "$1 not found: run scripts/bootstrap.sh first (or set CLOUDCOTE_VENV)"
}

stop_pid() {  # pidfile expected-word [seconds]: TERM, wait, then KILL
  local pidfile=$1 word=$2 secs=${3:-60} pid i
  pid_alive "$pidfile" "$word" || { rm -f "$pidfile"; return 0; }
  pid=$(head -n1 "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.5
  rm -f "$pidfile"
}

# --- Debian packages and tools ----------------------------------------------------------
pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}
mariadbd_bin() {
  local b
  for b in "$(command -v mariadbd 2>/dev/null || true)" /usr/sbin/mariadbd; do
    [ -n "$b" ] && [ -x "$b" ] && { echo "$b"; return 0; }
  done
  return 1
}
cass_java() {
  local j
  if [ -n "${CLOUDCOTE_CASSANDRA_JAVA:-}" ]; then echo "$CLOUDCOTE_CASSANDRA_JAVA"; return 0; fi
  # Cassandra 5.0 runs on Java 11 or 17 only: prefer Debian's 17 over any newer default.
  for j in /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/java-11-openjdk-*/bin/java; do
    [ -x "$j" ] && { echo "$j"; return 0; }
  done
  command -v java 2>/dev/null
}

ensure_packages() {  # the services about to start
  local pkgs=() s
  for s in "$@"; do
    case $s in
      pg) pg_bindir >/dev/null || pkgs+=(postgresql) ;;
      mysql) mariadbd_bin >/dev/null && command -v mariadb-install-db >/dev/null \
               && command -v mariadb >/dev/null || pkgs+=(mariadb-server) ;;
      cassandra)
        cass_java >/dev/null || pkgs+=(openjdk-17-jre-headless)
        command -v mvn >/dev/null || pkgs+=(maven) ;;
    esac
  done
  # Not a server: mbsync (Debian's isync) is a real IMAP client the tests drive
  # (tests/test_imap_mbsync.py); without root a missing one only skips that test.
  if ! command -v mbsync >/dev/null; then
    if [ "$IS_ROOT" = 1 ]; then pkgs+=(isync)
    else echo "services.sh: mbsync (Debian package isync) is missing; its test will skip"; fi
  fi
  # Likewise swaks, a real SMTP/LMTP client (tests/test_lmtp.py).
  if ! command -v swaks >/dev/null; then
    if [ "$IS_ROOT" = 1 ]; then pkgs+=(swaks)
    else echo "services.sh: swaks (Debian package swaks) is missing; its test will skip"; fi
  fi
  [ ${#pkgs[@]} -gt 0 ] || return 0
  [ "$IS_ROOT" = 1 ] || die "missing Debian packages (${pkgs[*]}): install them as root"
  echo "services.sh: installing Debian packages: ${pkgs[*]}"
  # Both database packages in one go, as the machine's docs suggest, when either is missing.
  case " ${pkgs[*]} " in
    *" postgresql "*|*" mariadb-server "*) pkgs+=(postgresql mariadb-server) ;;
  esac
  apt-get update -q >"$STATE/apt.log" 2>&1 || { log_tail apt "$STATE/apt.log"; die "apt-get update failed"; }
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >>"$STATE/apt.log" 2>&1 \
    || { log_tail apt "$STATE/apt.log"; die "apt-get install failed"; }
}

# --- PostgreSQL -------------------------------------------------------------------------
pg_check() {
  "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 "$CLOUDCOTE_PG_DSN" -c 'SELECT 1' >/dev/null 2>&1
}

pg_provision() {  # as the bootstrap superuser, over TCP, trust auth
  "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres <<SQL
SELECT format('CREATE ROLE %I LOGIN SUPERUSER', '$PG_USER')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER') \gexec
ALTER ROLE "$PG_USER" WITH LOGIN SUPERUSER PASSWORD '$PG_PASS';
SELECT format('CREATE DATABASE %I OWNER %I', '$PG_DB', '$PG_USER')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$PG_DB') \gexec
SQL
}

start_pg() {
  local t0 dir=$STATE/pg
  t0=$(now)
  PGBIN=$(pg_bindir) || die "PostgreSQL binaries not found"
  if port_open "$PG_HOST" "$PG_PORT"; then
    pg_check || { echo "pg: port $PG_HOST:$PG_PORT answers but $CLOUDCOTE_PG_DSN does not work" >&2; return 1; }
    echo "pg: up on $PG_HOST:$PG_PORT (already running, reused)"
    return 0
  fi
  make_service_dir "$dir" postgres
  if [ ! -s "$dir/data/PG_VERSION" ]; then
    rm -rf "$dir/data"
    as_user postgres "$PGBIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
      --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 \
      || { log_tail pg "$dir/initdb.log"; return 1; }
    cat >>"$dir/data/postgresql.conf" <<CONF

# cloudcote test server (scripts/services.sh); address and port: pg_ctl -o
unix_socket_directories = ''
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
  fi
  # ours but not answering (wedged, or on another port): stop it; else drop a stale pid file
  if as_user postgres "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_user postgres "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -f "$dir/data/postmaster.pid"
  as_user postgres "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
      -o "-c listen_addresses=$PG_HOST -p $PG_PORT" start >"$dir/pg_ctl.log" 2>&1 9>&- \
    || { log_tail pg "$dir/pg_ctl.log" "$dir/log"; return 1; }
  head -n1 "$dir/data/postmaster.pid" > "$dir/pid"
  pg_provision >>"$dir/pg_ctl.log" 2>&1 || { log_tail pg "$dir/pg_ctl.log" "$dir/log"; return 1; }
  pg_check || { log_tail pg "$dir/log"; echo "pg: $CLOUDCOTE_PG_DSN does not work" >&2; return 1; }
  echo "pg: up on $PG_HOST:$PG_PORT (started in $(since "$t0"), PostgreSQL $("$PGBIN/postgres" -V | awk '{print $3}'))"
}

stop_pg() {
  local dir=$STATE/pg
  PGBIN=$(pg_bindir) || true
  if pid_alive "$dir/pid" postgres; then
    as_user postgres "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 \
      || stop_pid "$dir/pid" postgres
    rm -f "$dir/pid"
    echo "pg: stopped"
  else
    rm -f "$dir/pid"
    echo "pg: not running from $dir"
  fi
}

# --- MariaDB ----------------------------------------------------------------------------
my_check() {
  mariadb --no-defaults --protocol=TCP -h "$MY_HOST" -P "$MY_PORT" -u "$MY_USER" -p"$MY_PASS" \
    -D "$MY_DB" -N -e 'SELECT 1' >/dev/null 2>&1
}

start_mysql() {
  local t0 dir=$STATE/mysql mariadbd i
  t0=$(now)
  mariadbd=$(mariadbd_bin) || die "mariadbd not found"
  if port_open "$MY_HOST" "$MY_PORT"; then
    my_check || { echo "mysql: port $MY_HOST:$MY_PORT answers but $CLOUDCOTE_MYSQL_DSN does not work" >&2; return 1; }
    echo "mysql: up on $MY_HOST:$MY_PORT (already running, reused)"
    return 0
  fi
  stop_pid "$dir/pid" mariadbd 30   # ours, but not answering: start it again
  make_service_dir "$dir" mysql
  mkdir -p "$dir/tmp"; [ "$IS_ROOT" = 1 ] && chown mysql: "$dir/tmp"
  if [ ! -d "$dir/data/mysql" ]; then
    rm -rf "$dir/data"
    mariadb-install-db --no-defaults --user=mysql --datadir="$dir/data" \
      --auth-root-authentication-method=socket --skip-test-db >"$dir/install-db.log" 2>&1 \
      || { log_tail mysql "$dir/install-db.log"; return 1; }
  fi
  local user_opt=(); [ "$IS_ROOT" = 1 ] && user_opt=(--user=mysql)
  : > "$dir/log"; : > "$dir/log.err"; [ "$IS_ROOT" = 1 ] && chown mysql: "$dir/log" "$dir/log.err"
  spawn "$dir/pid" mariadbd "$dir/log" \
    "$mariadbd" --no-defaults "${user_opt[@]}" --datadir="$dir/data" \
    --socket="$dir/mysqld.sock" --pid-file="$dir/mariadbd.pid" --log-error="$dir/log.err" \
    --tmpdir="$dir/tmp" --bind-address="$MY_HOST" --port="$MY_PORT" \
    --skip-name-resolve --max-connections=300 --character-set-server=utf8mb4 \
    --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 \
    || { log_tail mysql "$dir/log" "$dir/log.err"; return 1; }
  for ((i = 0; i < 300; i++)); do
    pid_alive "$dir/pid" mariadbd || { log_tail mysql "$dir/log" "$dir/log.err"; return 1; }
    [ -S "$dir/mysqld.sock" ] && port_open "$MY_HOST" "$MY_PORT" && break
    sleep 0.2
  done
  # root@localhost authenticates by unix socket (we are root); create/refresh our user.
  mariadb --no-defaults --socket="$dir/mysqld.sock" -u root >>"$dir/log" 2>&1 <<SQL || { log_tail mysql "$dir/log" "$dir/log.err"; return 1; }
CREATE DATABASE IF NOT EXISTS \`$MY_DB\`;
CREATE USER IF NOT EXISTS '$MY_USER'@'127.0.0.1' IDENTIFIED BY '$MY_PASS';
CREATE USER IF NOT EXISTS '$MY_USER'@'localhost' IDENTIFIED BY '$MY_PASS';
ALTER USER '$MY_USER'@'127.0.0.1' IDENTIFIED BY '$MY_PASS';
ALTER USER '$MY_USER'@'localhost' IDENTIFIED BY '$MY_PASS';
GRANT ALL PRIVILEGES ON *.* TO '$MY_USER'@'127.0.0.1' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO '$MY_USER'@'localhost' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
  my_check || { log_tail mysql "$dir/log" "$dir/log.err"; echo "mysql: $CLOUDCOTE_MYSQL_DSN does not work" >&2; return 1; }
  echo "mysql: up on $MY_HOST:$MY_PORT (started in $(since "$t0"), $("$mariadbd" --version | awk '{print $3}'))"
}

stop_mysql() {
  local dir=$STATE/mysql
  if pid_alive "$dir/pid" mariadbd; then
    stop_pid "$dir/pid" mariadbd 60
    echo "mysql: stopped"
  else
    rm -f "$dir/pid"
    echo "mysql: not running from $dir"
  fi
}

# --- Cassandra --------------------------------------------------------------------------
CASS_POM=$HERE/cassandra/pom.xml
cass_version() { sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$CASS_POM" | head -n1; }

cass_check() {  # CQL round trip with the venv's cassandra-driver
  "$PY" - "$CASS_HOST" "$CASS_PORT" <<'PY'
import logging, sys
logging.disable(logging.CRITICAL)
from cassandra.cluster import Cluster
cluster = Cluster([sys.argv[1]], port=int(sys.argv[2]), connect_timeout=5, control_connection_timeout=5)
try:
    session = cluster.connect()
    print(session.execute("SELECT release_version FROM system.local", timeout=10).one()[0])
finally:
    cluster.shutdown()
PY
}

cass_fetch() {  # the server's jars into $STATE/cassandra/lib (skipped when already there)
  local dir=$STATE/cassandra ver
  ver=$(cass_version)
  [ -f "$dir/lib/cassandra-all-$ver.jar" ] && return 0
  command -v mvn >/dev/null || die "mvn not found"
  rm -rf "$dir/lib.tmp"
  # ~100 jars, ~70 MB.  Run from the state dir (nothing is written next to the pom);
  # offline first (with a warm ~/.m2 that skips the remote metadata checks), else from
  # Maven Central.  C1-only JIT and serial GC make this short Maven run 2-3x faster here.
  local mvn=(mvn -B -q -Dstyle.color=never -f "$CASS_POM" dependency:copy-dependencies
             -DoutputDirectory="$dir/lib.tmp")
  (cd "$dir" && export MAVEN_OPTS="-XX:TieredStopAtLevel=1 -XX:+UseSerialGC ${MAVEN_OPTS:-}" &&
    { "${mvn[@]}" -o || { rm -rf "$dir/lib.tmp"; "${mvn[@]}"; }; }) >"$dir/mvn.log" 2>&1 \
    || { log_tail cassandra "$dir/mvn.log"; return 1; }
  [ -f "$dir/lib.tmp/cassandra-all-$ver.jar" ] || { log_tail cassandra "$dir/mvn.log"; return 1; }
  rm -rf "${dir:?}/lib"; mv "$dir/lib.tmp" "$dir/lib"
}

cass_launch() {
  local dir=$STATE/cassandra node=$STATE/cassandra/node java jamm
  java=$(cass_java) || die "no java for Cassandra"
  mkdir -p "$node"/{data,commitlog,saved_caches,hints,cdc_raw,logs,triggers} "$dir/tmp"
  sed -e "s#@DIR@#$node#g" -e "s#@NATIVE_PORT@#$CASS_PORT#g" \
      -e "s#@STORAGE_PORT@#$CASS_STORAGE_PORT#g" -e "s#^listen_address:.*#listen_address: $CASS_HOST#" \
      -e "s#^rpc_address:.*#rpc_address: $CASS_HOST#" -e "s#\"127.0.0.1:#\"$CASS_HOST:#" \
      "$HERE/cassandra/cassandra.yaml" > "$dir/cassandra.yaml"
  jamm=$(ls "$dir"/lib/jamm-*.jar 2>/dev/null | head -n1 || true)
  local jvm=(
    -Xms"$CASS_HEAP" -Xmx"$CASS_HEAP" -Xss256k -XX:+UseG1GC -XX:+ParallelRefProcEnabled
    -XX:MaxTenuringThreshold=1 -XX:+UseThreadPriorities -XX:+PerfDisableSharedMem
    -XX:+ExitOnOutOfMemoryError
    # C1 JIT only: half the CPU to start (2-4x faster start on a busy 2-core machine), same
    # speed for the tests' small queries.  CLOUDCOTE_CASSANDRA_JVM_OPTS=-XX:TieredStopAtLevel=4
    # restores C2 (e.g. for benchmarks).
    -XX:TieredStopAtLevel=1
    -ea -da:net.openhft... -Djava.net.preferIPv4Stack=true
    -Djava.io.tmpdir="$dir/tmp" -Djna.tmpdir="$dir/tmp" -Dio.netty.native.workdir="$dir/tmp"
    # JDK 17 module flags (Cassandra 5.0 conf/jvm17-server.options)
    -Djdk.attach.allowAttachSelf=true
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true -Dio.netty.allocator.maxOrder=11
    --add-exports=java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports=java.management/com.sun.jmx.remote.security=ALL-UNNAMED
    --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports=java.sql/java.sql=ALL-UNNAMED
    --add-exports=java.base/java.lang.ref=ALL-UNNAMED
    --add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens=java.base/java.lang.module=ALL-UNNAMED
    --add-opens=java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens=java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens=java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens=java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens=java.base/java.io=ALL-UNNAMED
    --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens=java.base/java.lang=ALL-UNNAMED
    --add-opens=java.base/java.util=ALL-UNNAMED
    --add-opens=java.base/java.nio=ALL-UNNAMED
    # Cassandra
    -Dcassandra.config="file://$dir/cassandra.yaml"
    -Dcassandra.storagedir="$node"
    -Dcassandra.logdir="$node/logs"
    -Dcassandra.triggers_dir="$node/triggers"
    -Dcassandra-foreground=yes
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=1000
    -Dcassandra.memtable.row_overhead_size=180   # skip the ~5-20 s estimate (it says 180 here)
    -Dcassandra.unsafesystem=true                # no fsync'd flush of system tables: faster DDL
    -Dcassandra.jmx.local.port="$CASS_JMX_PORT"
    -Dlogback.configurationFile="$HERE/cassandra/logback.xml"
  )
  [ -n "$jamm" ] && jvm+=("-javaagent:$jamm")
  # shellcheck disable=SC2206  # extra options, split on spaces on purpose
  [ -n "${CLOUDCOTE_CASSANDRA_JVM_OPTS:-}" ] && jvm+=($CLOUDCOTE_CASSANDRA_JVM_OPTS)
  : > "$dir/log"
  spawn "$dir/pid" CassandraDaemon "$dir/log" \
    "$java" "${jvm[@]}" -cp "$dir/lib/*" org.apache.cassandra.service.CassandraDaemon
}

cass_wait() {  # until "Startup complete" + CQL answers, the process dies, or time runs out
  local dir=$STATE/cassandra deadline
  deadline=$((SECONDS + CASS_TIMEOUT))
  while ((SECONDS < deadline)); do
    pid_alive "$dir/pid" CassandraDaemon || { echo "cassandra: the server exited" >&2; return 1; }
    if grep -q "Startup complete" "$dir/log" && port_open "$CASS_HOST" "$CASS_PORT"; then
      return 0
    fi
    sleep 0.5
  done
  echo "cassandra: not ready after ${CASS_TIMEOUT}s" >&2
  return 1
}

start_cassandra() {  # phase 1: fetch and launch (the wait is phase 2, last)
  local dir=$STATE/cassandra
  mkdir -p "$dir"
  need_venv_tool "$PY"
  if port_open "$CASS_HOST" "$CASS_PORT"; then echo reuse > "$dir/.phase"; return 0; fi
  if pid_alive "$dir/pid" CassandraDaemon; then
    # ours and alive but not answering yet: a start in progress or a wedged node
    if grep -q "Startup complete" "$dir/log" 2>/dev/null; then stop_pid "$dir/pid" CassandraDaemon 60
    else echo wait > "$dir/.phase"; return 0; fi
  fi
  if [ -d "$dir/node/data/system" ]; then echo launch-warm > "$dir/.phase"
  else echo launch > "$dir/.phase"; fi
  local p
  for p in "$CASS_STORAGE_PORT" "$CASS_JMX_PORT"; do
    if port_open "$CASS_HOST" "$p"; then
      echo "cassandra: port $CASS_HOST:$p (storage or JMX) is taken by another process" >&2
      return 1
    fi
  done
  cass_fetch || return 1
  cass_launch
}

wait_cassandra() {
  local t0=$1 dir=$STATE/cassandra phase ver
  phase=$(cat "$dir/.phase" 2>/dev/null || echo launch); rm -f "$dir/.phase"
  if [ "$phase" = reuse ]; then
    ver=$(cass_check 2>"$dir/check.log") \
      || { echo "cassandra: port $CASS_HOST:$CASS_PORT answers but CQL does not work" >&2; cat "$dir/check.log" >&2; return 1; }
    echo "cassandra: up on $CASS_HOST:$CASS_PORT (already running, reused, Cassandra $ver)"
    return 0
  fi
  if ! cass_wait; then
    log_tail cassandra "$dir/log"
    stop_pid "$dir/pid" CassandraDaemon 30
    # a node that failed on kept data gets one more try on fresh data; a fresh one doesn't
    [ "$phase" = launch-warm ] || [ "$phase" = wait ] || return 1
    echo "cassandra: wiping its data ($dir/node) and trying once more" >&2
    cp -f "$dir/log" "$dir/log.failed"
    rm -rf "$dir/node"
    cass_launch
    cass_wait || { log_tail cassandra "$dir/log"; stop_pid "$dir/pid" CassandraDaemon 30; return 1; }
  fi
  local i
  for ((i = 0; i < 30; i++)); do   # CQL may lag "Startup complete" by a moment
    ver=$(cass_check 2>"$dir/check.log") && break
    sleep 1
  done
  [ -n "${ver:-}" ] || { cat "$dir/check.log" >&2; log_tail cassandra "$dir/log"; return 1; }
  echo "cassandra: up on $CASS_HOST:$CASS_PORT (started in $(since "$t0"), Cassandra $ver)"
}

stop_cassandra() {
  local dir=$STATE/cassandra
  if pid_alive "$dir/pid" CassandraDaemon; then
    stop_pid "$dir/pid" CassandraDaemon 60
    echo "cassandra: stopped"
  else
    rm -f "$dir/pid"
    echo "cassandra: not running from $dir"
  fi
}

# --- SeaweedFS --------------------------------------------------------------------------
sw_check() {  # an authenticated S3 call
  "$PY" - "$CLOUDCOTE_SEAWEEDFS_ENDPOINT" "$CLOUDCOTE_SEAWEEDFS_ACCESS_KEY" "$CLOUDCOTE_SEAWEEDFS_SECRET_KEY" <<'PY'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[2],
                  aws_secret_access_key=sys.argv[3], region_name="us-east-1",
                  config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 1}))
s3.list_buckets()
PY
}

start_seaweedfs() {
  local t0 dir=$STATE/seaweedfs i
  t0=$(now)
  need_venv_tool "$VENV/bin/weed"; need_venv_tool "$PY"
  mkdir -p "$dir"
  if port_open "$SW_HOST" "$SW_PORT"; then
    sw_check 2>"$dir/check.log" || { echo "seaweedfs: port $SW_HOST:$SW_PORT answers but S3 with our credentials fails" >&2; cat "$dir/check.log" >&2; return 1; }
    echo "seaweedfs: up on $SW_HOST:$SW_PORT (already running, reused)"
    return 0
  fi
  stop_pid "$dir/pid" weed 15
  mkdir -p "$dir/data"
  : > "$dir/log"
  AWS_ACCESS_KEY_ID=$CLOUDCOTE_SEAWEEDFS_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$CLOUDCOTE_SEAWEEDFS_SECRET_KEY \
  spawn "$dir/pid" weed "$dir/log" \
    "$VENV/bin/weed" -logtostderr=true mini -dir="$dir/data" -ip="$SW_HOST" -ip.bind="$SW_HOST" \
    -admin.ui=false -webdav=false -s3.port="$SW_PORT" -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.port="$SW_MASTER_PORT" -volume.port="$SW_VOLUME_PORT" -filer.port="$SW_FILER_PORT" \
    -admin.port="$SW_ADMIN_PORT" \
    -filer.localSocket="$dir/filer.sock" -s3.localSocket="$dir/s3.sock" \
    -master.telemetry=false -volume.preStopSeconds=0 \
    || { log_tail seaweedfs "$dir/log"; return 1; }
  for ((i = 0; i < 360; i++)); do
    pid_alive "$dir/pid" weed || { log_tail seaweedfs "$dir/log"; return 1; }
    if port_open "$SW_HOST" "$SW_PORT" && sw_check 2>"$dir/check.log"; then
      echo "seaweedfs: up on $SW_HOST:$SW_PORT (started in $(since "$t0"), $("$VENV/bin/weed" version 2>/dev/null | awk '{print "weed", $3}'))"
      return 0
    fi
    sleep 0.5
  done
  cat "$dir/check.log" >&2; log_tail seaweedfs "$dir/log"
  return 1
}

stop_seaweedfs() {
  local dir=$STATE/seaweedfs
  if pid_alive "$dir/pid" weed; then
    stop_pid "$dir/pid" weed 30
    echo "seaweedfs: stopped"
  else
    rm -f "$dir/pid"
    echo "seaweedfs: not running from $dir"
  fi
}

# --- moto -------------------------------------------------------------------------------
moto_check() {
  "$PY" - "$CLOUDCOTE_MOTO_ENDPOINT" <<'PY'
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1] + "/moto-api/data.json", timeout=3).read()
except urllib.error.HTTPError:
    pass  # it answers HTTP
PY
}

start_moto() {
  local t0 dir=$STATE/moto i
  t0=$(now)
  need_venv_tool "$VENV/bin/moto_server"; need_venv_tool "$PY"
  if port_open "$MOTO_HOST" "$MOTO_PORT"; then
    moto_check 2>/dev/null || { echo "moto: port $MOTO_HOST:$MOTO_PORT answers but not HTTP" >&2; return 1; }
    echo "moto: up on $MOTO_HOST:$MOTO_PORT (already running, reused)"
    return 0
  fi
  stop_pid "$dir/pid" moto_server 15
  mkdir -p "$dir"
  : > "$dir/log"
  spawn "$dir/pid" moto_server "$dir/log" \
    env -C "$dir" "$VENV/bin/moto_server" -H "$MOTO_HOST" -p "$MOTO_PORT" \
    || { log_tail moto "$dir/log"; return 1; }
  for ((i = 0; i < 120; i++)); do
    pid_alive "$dir/pid" moto_server || { log_tail moto "$dir/log"; return 1; }
    if port_open "$MOTO_HOST" "$MOTO_PORT" && moto_check 2>/dev/null; then
      echo "moto: up on $MOTO_HOST:$MOTO_PORT (started in $(since "$t0"), moto $("$PY" -c 'import moto; print(moto.__version__)' 2>/dev/null))"
      return 0
    fi
    sleep 0.25
  done
  log_tail moto "$dir/log"
  return 1
}

stop_moto() {
  local dir=$STATE/moto
  if pid_alive "$dir/pid" moto_server; then
    stop_pid "$dir/pid" moto_server 15
    echo "moto: stopped"
  else
    rm -f "$dir/pid"
    echo "moto: not running from $dir"
  fi
}

# --- commands ---------------------------------------------------------------------------
service_addr() {
  case $1 in
    pg) echo "$PG_HOST $PG_PORT" ;;
    mysql) echo "$MY_HOST $MY_PORT" ;;
    cassandra) echo "$CASS_HOST $CASS_PORT" ;;
    seaweedfs) echo "$SW_HOST $SW_PORT" ;;
    moto) echo "$MOTO_HOST $MOTO_PORT" ;;
  esac
}

pick_services() {  # validates names; none given = all
  local s
  SERVICES=()
  [ $# -gt 0 ] || set -- "${ALL_SERVICES[@]}"
  for s in "$@"; do
    case " ${ALL_SERVICES[*]} " in
      *" $s "*) case " ${SERVICES[*]-} " in *" $s "*) ;; *) SERVICES+=("$s") ;; esac ;;
      *) die "unknown service '$s' (known: ${ALL_SERVICES[*]})" ;;
    esac
  done
}

has() { case " ${SERVICES[*]} " in *" $1 "*) return 0 ;; esac; return 1; }

lock_state() {
  exec 9>"$STATE/.lock"
  flock -w 900 9 || die "another services.sh holds $STATE/.lock"
}

cmd_start() {
  local t0 s failed=() pids=() names=()
  t0=$(now)
  ensure_packages "${SERVICES[@]}"
  # Cassandra is the slowest: launch it first (in the background), wait for it last.
  local cass_pid=""
  if has cassandra; then
    start_cassandra & cass_pid=$!
  fi
  for s in pg mysql seaweedfs moto; do
    has "$s" || continue
    "start_$s" & pids+=($!); names+=("$s")
  done
  local i
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed+=("${names[$i]}")
  done
  if [ -n "$cass_pid" ]; then
    if wait "$cass_pid"; then
      wait_cassandra "$t0" || failed+=(cassandra)
    else
      failed+=(cassandra)
    fi
  fi
  if [ ${#failed[@]} -gt 0 ]; then
    echo "services.sh: FAILED to start: ${failed[*]} (logs under $STATE)" >&2
    return 1
  fi
  echo "services.sh: all up (${SERVICES[*]}) in $(since "$t0"); settings in $ENV_FILE"
}

cmd_status() {
  local s addr down=0 dir note
  for s in "${SERVICES[@]}"; do
    addr=$(service_addr "$s"); dir=$STATE/$s
    note=""
    if [ -s "$dir/pid" ] && kill -0 "$(head -n1 "$dir/pid")" 2>/dev/null; then
      note=" (pid $(head -n1 "$dir/pid"))"
    fi
    # shellcheck disable=SC2086  # "host port"
    if port_open $addr; then
      [ -n "$note" ] || note=" (not started by services.sh)"
      echo "$s: up ${addr/ /:}$note"
    else
      echo "$s: down ${addr/ /:}$note"
      down=1
    fi
  done
  return $down
}

cmd_stop() {
  local s
  # in parallel: they are independent
  for s in "${SERVICES[@]}"; do "stop_$s" & done
  wait
}

usage() { echo "usage: $0 start|stop|status [${ALL_SERVICES[*]}]" >&2; exit 2; }

main() {
  [ $# -ge 1 ] || usage
  local cmd=$1; shift
  pick_services "$@"
  case $cmd in
    start|stop) mkdir -p "$STATE"; STATE=$(cd "$STATE" && pwd); lock_state; "cmd_$cmd" ;;
    status) [ -d "$STATE" ] && STATE=$(cd "$STATE" && pwd); cmd_status ;;
    *) usage ;;
  esac
}

main "$@"
