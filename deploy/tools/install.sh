#!/usr/bin/env bash
# Installs what the deploy tests need; safe to run again (does nothing twice).
#   bash deploy/tools/install.sh .venv
# - Debian's prometheus package (prometheus + promtool), only if missing;
# - the pinned PyPI tools of deploy/tools/requirements.txt into the given venv.
set -euo pipefail

venv=${1:?usage: deploy/tools/install.sh VENV_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The package may start a system Prometheus on :9090; the tests start their own.
fi

"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$here/requirements.txt"
