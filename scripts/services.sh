#!/usr/bin/env bash
# Makes sure the servers the tests talk to are running on 127.0.0.1: starts a stopped one, and
# installs a missing one from Debian's packages. Idempotent; safe to run before every test run.
#
#   PostgreSQL  127.0.0.1:5432  trust auth, database `test`
#   MariaDB     127.0.0.1:3306  root without password, database `test`
#   Redis       127.0.0.1:6379
#   NATS        127.0.0.1:4222  with JetStream
#   RabbitMQ    127.0.0.1:5672  guest/guest
#   Mosquitto   127.0.0.1:1883  MQTT 5, anonymous
#   Kafka       127.0.0.1:9092  the Kafka-compatible tansu broker, in memory (installed with
#                               `cargo install` the first time: about 15 minutes on 2 cores)
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  log "installing $* from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# wait_for NAME SECONDS COMMAND...: polls COMMAND until it succeeds, fails after SECONDS.
wait_for() {
  local name=$1 seconds=$2; shift 2
  for _ in $(seq "$seconds"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "$name did not come up within ${seconds}s"
  return 1
}

postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    :
  else
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      apt_install postgresql postgresql-client
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    local conf=/etc/postgresql/$version/main
    # A test server: local TCP connections are trusted, as on the CI machines.
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$conf/pg_hba.conf"; then
      as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$conf/pg_hba.conf"
    fi
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for PostgreSQL 60 pg_isready -h 127.0.0.1 -p 5432
  fi
  if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'SELECT 1' >/dev/null 2>&1; then
    log "creating PostgreSQL database test"
    psql -h 127.0.0.1 -U postgres -d postgres -c 'CREATE DATABASE test' >/dev/null
  fi
  postgres_logical
  log "PostgreSQL ready on 127.0.0.1:5432"
}

# The log-tailing relay streams a replication slot: PostgreSQL must decode its WAL logically.
# ALTER SYSTEM writes postgresql.auto.conf; wal_level only changes with a restart, done once.
postgres_logical() {
  local sql="psql -h 127.0.0.1 -U postgres -d postgres -Atc"
  if [ "$($sql 'SHOW wal_level')" = logical ]; then return 0; fi
  log "setting wal_level = logical (restarting PostgreSQL once)"
  $sql "ALTER SYSTEM SET wal_level = 'logical'" >/dev/null
  local version
  version=$($sql "SELECT current_setting('server_version_num')::int / 10000")
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main restart
  wait_for PostgreSQL 60 pg_isready -h 127.0.0.1 -p 5432
  if [ "$($sql 'SHOW wal_level')" != logical ]; then
    log "PostgreSQL still runs with wal_level = $($sql 'SHOW wal_level')"
    return 1
  fi
}

mariadb_up() { mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 -uroot ping; }

mariadb() {
  if ! mariadb_up >/dev/null 2>&1; then
    if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
      apt_install mariadb-server mariadb-client
    fi
    log "starting MariaDB"
    as_root mkdir -p /run/mysqld
    as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    if ! wait_for MariaDB 60 mariadb-admin -uroot ping; then return 1; fi
    # A fresh install lets root in through the socket only: allow TCP without a password.
    if ! mariadb_up >/dev/null 2>&1; then
      as_root mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket; CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;"
    fi
    wait_for MariaDB 30 mariadb_up
  fi
  command mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -uroot -e 'CREATE DATABASE IF NOT EXISTS test'
  log "MariaDB ready on 127.0.0.1:3306"
}

# port_open PORT: something listens on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

redis() {
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    if ! command -v redis-server >/dev/null 2>&1; then
      apt_install redis-server
    fi
    log "starting Redis"
    as_root redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --appendonly no >/dev/null
    wait_for Redis 30 redis-cli -h 127.0.0.1 -p 6379 ping
  fi
  log "Redis ready on 127.0.0.1:6379"
}

nats() {
  if ! port_open 4222; then
    if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
      apt_install nats-server
    fi
    local server
    server=$(command -v nats-server || echo /usr/sbin/nats-server)
    log "starting NATS with JetStream"
    as_root mkdir -p /var/lib/nats-server
    as_root setsid "$server" -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server \
      -l /var/log/nats-server.log </dev/null >/dev/null 2>&1 &
    wait_for NATS 30 port_open 4222
  fi
  log "NATS ready on 127.0.0.1:4222"
}

rabbitmq() {
  if ! port_open 5672; then
    if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
      apt_install rabbitmq-server
    fi
    log "starting RabbitMQ"
    as_root rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_for RabbitMQ 120 port_open 5672
  fi
  log "RabbitMQ ready on 127.0.0.1:5672"
}

# Mosquitto writes its PUBACKs with Nagle's algorithm on unless told otherwise: a publisher
# that waits for its acknowledgements (the sink, with each batch) then gets them about 40 ms
# late, its own delayed TCP ACK holding the broker's next segment (10,000 events/s instead of
# 33,000; see the README's sink benchmark). And it keeps at most 1,000 messages for a consumer
# whose persistent session is away, dropping the rest: the inbox's MQTT consumer must find
# everything published meanwhile. Each setting is added once, restarting the broker.
MOSQUITTO_CONF=/etc/mosquitto/mosquitto.conf

mosquitto_start() {
  local server
  server=$(type -P mosquitto || echo /usr/sbin/mosquitto)
  as_root "$server" -d -c "$MOSQUITTO_CONF"
  wait_for Mosquitto 30 port_open 1883
}

mosquitto() {
  if ! type -P mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    apt_install mosquitto
  fi
  local restart=false setting
  for setting in 'set_tcp_nodelay true' 'max_queued_messages 1000000'; do
    if ! grep -qx "$setting" "$MOSQUITTO_CONF" 2>/dev/null; then
      log "Mosquitto: $setting in $MOSQUITTO_CONF"
      printf '%s\n' "$setting" | as_root tee -a "$MOSQUITTO_CONF" >/dev/null
      restart=true
    fi
  done
  if port_open 1883 && $restart; then
    log "restarting Mosquitto for the new setting"
    # Stopped by its pid (the service's own pid file), never by name.
    local pid_file
    pid_file=$(awk '$1 == "pid_file" { print $2 }' "$MOSQUITTO_CONF")
    if [ -n "$pid_file" ] && [ -s "$pid_file" ]; then
      as_root kill "$(cat "$pid_file")" || true
    else
      log "Mosquitto has no pid file to stop it by: restart it by hand for the new settings"
      return 1
    fi
    wait_for "Mosquitto to stop" 30 bash -c '! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null'
  fi
  if ! port_open 1883; then
    log "starting Mosquitto"
    mosquitto_start
  fi
  log "Mosquitto ready on 127.0.0.1:1883"
}

kafka() {
  if ! port_open 9092; then
    local tansu
    tansu=$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")
    if [ ! -x "$tansu" ]; then
      log "installing the tansu Kafka-compatible broker (cargo install, about 15 minutes)"
      cargo install tansu --locked --features dynostore --quiet
    fi
    log "starting tansu (Kafka protocol, in-memory storage)"
    setsid "$tansu" broker --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ \
      </dev/null >"${TMPDIR:-/tmp}/tansu.log" 2>&1 &
    wait_for tansu 30 port_open 9092
  fi
  log "Kafka (tansu) ready on 127.0.0.1:9092"
}

# The official libraries of other ecosystems the tests check outbox against (tests/interop):
# the AsyncAPI parser and Standard Webhooks for Node.js (npm, with Node.js from Debian's
# packages if missing), Standard Webhooks for Python (pip, into tests/interop/python).
interop() {
  local dir
  dir="$(cd "$(dirname "$0")/../tests/interop" && pwd)"
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
  fi
  if [ ! -d "$dir/node_modules/@asyncapi/parser" ] || [ ! -d "$dir/node_modules/standardwebhooks" ] \
    || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    log "installing @asyncapi/parser and standardwebhooks (npm ci)"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >/dev/null
    touch "$dir/node_modules"
  fi
  if ! command -v python3 >/dev/null; then
    apt_install python3 python3-pip
  fi
  if [ ! -d "$dir/python/standardwebhooks" ] || [ "$dir/requirements.txt" -nt "$dir/python" ]; then
    log "installing standardwebhooks for Python (pip)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      --target "$dir/python" --upgrade -r "$dir/requirements.txt"
    touch "$dir/python"
  fi
  log "interop libraries ready (Node.js $(node --version), $(python3 --version))"
}

postgres
mariadb
redis
nats
rabbitmq
mosquitto
kafka
interop
