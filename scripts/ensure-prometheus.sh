#!/usr/bin/env bash
# Make `prometheus` and `promtool` available for the telemetry tests (the alert rules' unit
# tests, the dashboard's queries against a real Prometheus): Debian's `prometheus` package, which
# ships both. Installs only when missing, and only as root with apt; otherwise says what to do.
# Prints promtool's path.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # policy-rc.d keeps the package from starting a system-wide Prometheus we do not want;
    # a machine's own policy-rc.d is left as it is.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    # No recommends: prometheus-node-exporter is not needed to run tests.
    install=(apt-get install -y -qq --no-install-recommends prometheus)
    ("${install[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && "${install[@]}" >/dev/null 2>&1; }) || true
fi
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi
echo "ensure-prometheus: promtool/prometheus missing; install Debian's package: apt-get install prometheus" >&2
exit 1
