#!/usr/bin/env bash
# Debian packages the project needs beyond PyPI: PostgreSQL + PostGIS for the pgstac STAC server,
# and Chromium (headless) for the browser test of `las inspect`'s report.
# Installed only when missing, and only as root; otherwise those tests skip with a reason.
set -u
need=()
command -v pg_ctl >/dev/null 2>&1 || [ -x /usr/lib/postgresql/15/bin/pg_ctl ] || need+=(postgresql-15)
ls /usr/share/postgresql/15/extension/postgis.control >/dev/null 2>&1 || need+=(postgresql-15-postgis-3)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "system-deps: skipping apt-get install ${need[*]} (needs root); pgstac and browser tests will be skipped." >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: no apt-get on this machine; install ${need[*]} yourself (pgstac server, browser test)." >&2
  exit 0
fi
echo "system-deps: apt-get install ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null \
  || echo "system-deps: apt-get failed; pgstac and browser tests will be skipped." >&2
exit 0
