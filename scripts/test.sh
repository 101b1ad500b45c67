#!/usr/bin/env bash
# Sets up everything the test suite needs from this repository's own files,
# then runs it: a venv in .venv with the package and its test extras, Debian's
# chromium for the browser test, Docker for the image smoke test (CI only).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# The test tools at the versions in requirements-test.lock: a new release of one
# (schemathesis, hypothesis, ...) must not turn a clean clone red overnight.
.venv/bin/python -m pip install --quiet -c requirements-test.lock -e '.[test]'

# Real parts from Debian: a headless browser for tests/test_page.py (never
# Playwright's own download), the load balancer for tests/test_load_balancer.py
# and Redis for tests/test_shared_limits.py (each test starts its own redis-server).
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$missing haproxy"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing$missing (apt-get) for the browser, load-balancer and shared-limits tests ..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

exec .venv/bin/python -m pytest "$@"
