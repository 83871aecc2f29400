#!/usr/bin/env bash
# Make sure the services the tests use are up: PostgreSQL on 127.0.0.1:5432
# (trust auth for user postgres) for the store tests on PostgreSQL, and Redis
# on 127.0.0.1:6379 (and its server binary, which the cluster tests start
# privately) for the shared limits. Installs
# and starts what is missing; leaves running services alone. Point the tests
# at another server with TOLLGATE_TEST_PG_URL instead.
set -euo pipefail

SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if [ -n "${TOLLGATE_TEST_PG_URL:-}" ]; then
  echo "services: using TOLLGATE_TEST_PG_URL"
elif pg_up; then
  echo "services: PostgreSQL is up on 127.0.0.1:5432"
else
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "services: installing PostgreSQL"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  conf=/etc/postgresql/$ver/main
  # The tests connect as postgres over TCP without a password.
  if ! grep -q "tollgate-tests" "$conf/pg_hba.conf"; then
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust # tollgate-tests\nhost all all ::1/128 trust # tollgate-tests' "$conf/pg_hba.conf"
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || $SUDO pg_ctlcluster "$ver" main start
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  pg_up || { echo "services: PostgreSQL did not start" >&2; exit 1; }
  echo "services: started PostgreSQL $ver"
fi

redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "services: installing Redis"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
fi
if [ -n "${TOLLGATE_TEST_REDIS:-}" ]; then
  echo "services: using TOLLGATE_TEST_REDIS"
elif redis_up; then
  echo "services: Redis is up on 127.0.0.1:6379"
else
  redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no --daemonize yes >/dev/null
  for _ in $(seq 1 30); do redis_up && break; sleep 0.2; done
  redis_up || { echo "services: Redis did not start" >&2; exit 1; }
  echo "services: started Redis"
fi
