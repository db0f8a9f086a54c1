#!/usr/bin/env bash
# Install (Debian packages) and start what flashsale's tests and demo need, when it is missing.
# Usage: scripts/ensure-services.sh [redis] [postgres] [chromium] [promtool] [wrk]
set -euo pipefail
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq >/dev/null 2>&1 || true; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
for what in "$@"; do
  case "$what" in
    redis)
      command -v redis-server >/dev/null || apt_install redis-server
      command -v redis-cli >/dev/null || apt_install redis-tools  # the cluster tests join nodes with it
      # stop any redis-server the package may have started as a service: tests start their own
      ;;
    postgres)
      if ! command -v pg_ctlcluster >/dev/null; then apt_install postgresql; fi
      if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
        ver=$(ls /etc/postgresql | sort -n | tail -1)
        pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
        for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
      fi
      # trust auth for the test role on loopback, as on the CI machine
      psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1" >/dev/null 2>&1 || {
        su postgres -c "psql -tAc \"ALTER USER postgres PASSWORD NULL\"" >/dev/null 2>&1 || true
      }
      psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname='test'" | grep -q 1 \
        || psql -h 127.0.0.1 -U postgres -d postgres -c "create database test" >/dev/null
      ;;
    chromium)
      command -v chromium >/dev/null || apt_install chromium chromium-driver fonts-noto-cjk
      ;;
    promtool)
      # promtool checks deploy/alerts.yml and runs its unit tests; Debian ships it in the prometheus
      # package, whose own server (and node exporter) the tests do not want running
      if ! command -v promtool >/dev/null; then
        apt_install --no-install-recommends prometheus
        for unit in prometheus prometheus-node-exporter; do
          if command -v systemctl >/dev/null && systemctl is-enabled -q "$unit" 2>/dev/null; then
            systemctl disable --now -q "$unit" 2>/dev/null || true
          fi
          if [ -x "/etc/init.d/$unit" ]; then "/etc/init.d/$unit" stop >/dev/null 2>&1 || true; fi
        done
      fi
      ;;
    wrk)
      command -v wrk >/dev/null || apt_install wrk
      ;;
    *) echo "ensure-services: unknown service $what" >&2; exit 2 ;;
  esac
done
