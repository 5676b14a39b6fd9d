#!/usr/bin/env bash
# The README's test command: installs whatever the tests need that is missing, then runs the whole suite.
#   - Debian packages: zookeeper (3.8), etcd-server + etcd-client (3.4) and postgresql (15; the tests start their
#     own servers), chromium +
#     chromium-driver (the inspector page's browser test; browsers cannot be downloaded otherwise)
#     and prometheus (its promtool checks the alert rules and /metrics; no Prometheus server is started)
#   - a virtualenv in .venv with idgen and its test extras
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k zookeeper -x`. `bash tests/run.sh -m quick` runs only
# the tests that need nothing but Python (tests/tiers.py), and installs no Debian package for them.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
if [[ " $* " != *" -m quick "* ]]; then
  for pkg in zookeeper etcd-server etcd-client chromium chromium-driver postgresql prometheus; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  command -v java >/dev/null || missing+=(default-jre-headless)
fi
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
