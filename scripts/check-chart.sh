#!/usr/bin/env bash
# The chart, image and alert-rule checks of `make test` (target `chart`), offline once the tools
# are cached:
#   helm lint --strict and helm template for each values file (with an example site on top),
#   kubernetes-validate --strict on the rendered core objects, the KEDA objects against KEDA's
#   schema (scripts/keda-validate.mjs), the PodMonitor/ServiceMonitor against the Prometheus
#   Operator's (scripts/monitoring-validate.mjs), hadolint on the Dockerfile, and
#   `promtool check rules` on deploy/prometheus/alerts.yaml (their unit tests,
#   `promtool test rules`, run in pytest: tests/chart/test_alerts.py).
# Tools: scripts/install-chart-tools.sh (pinned, cached in .tools/; a no-op once installed) and
# scripts/ensure-prometheus.sh (Debian's prometheus package: promtool, and the Prometheus the
# dashboard test queries; installed only when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${TOOLS:-.tools}
VENV=${VENV:-.venv}
KUBE_VERSION=${KUBE_VERSION:-1.32.0}
CHART=deploy/k8s/mati2sentinel

scripts/install-chart-tools.sh "$TOOLS" "$VENV"
PROMTOOL=$(scripts/ensure-prometheus.sh)
HELM="$TOOLS/bin/helm"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# name | values files on top of the chart's values.yaml
variants=(
  "servicebus|$CHART/ci/site-values.yaml"
  "redis|$CHART/values-redis.yaml $CHART/ci/redis-site-values.yaml"
  "keyvault|$CHART/ci/keyvault-values.yaml"
  "telemetry|$CHART/ci/site-values.yaml $CHART/ci/telemetry-values.yaml"
  "servicemonitor|$CHART/values-redis.yaml $CHART/ci/redis-site-values.yaml $CHART/ci/servicemonitor-values.yaml"
  "destinations|$CHART/ci/site-values.yaml $CHART/ci/destinations-values.yaml"
)

for variant in "${variants[@]}"; do
  name=${variant%%|*}
  args=()
  for f in ${variant#*|}; do args+=(-f "$f"); done
  echo "chart[$name]: helm lint --strict, template, kubernetes-validate --strict -k $KUBE_VERSION, KEDA, monitoring"
  "$HELM" lint --strict --quiet --kube-version "$KUBE_VERSION" "$CHART" "${args[@]}" >/dev/null \
    || { "$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CHART" "${args[@]}"; exit 1; }
  "$HELM" template m2s "$CHART" --namespace mati2sentinel --kube-version "$KUBE_VERSION" \
    "${args[@]}" > "$out/$name.yaml"
  # CRD kinds (KEDA, Prometheus Operator, SecretProviderClass) have no schema there: KEDA and
  # the monitors are checked below.
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$KUBE_VERSION" "$out/$name.yaml" 2>&1 \
    | { grep -v "Couldn't find schema for kind \(ScaledObject\|TriggerAuthentication\|SecretProviderClass\|PodMonitor\|ServiceMonitor\) " || true; }
  KEDA_TOOLS_DIR="$TOOLS/node" node scripts/keda-validate.mjs "$out/$name.yaml"
  MONITORING_TOOLS_DIR="$TOOLS/node" node scripts/monitoring-validate.mjs "$out/$name.yaml"
done

echo "alerts: promtool check rules deploy/prometheus/alerts.yaml"
"$PROMTOOL" check rules deploy/prometheus/alerts.yaml >/dev/null \
  || "$PROMTOOL" check rules deploy/prometheus/alerts.yaml

echo "image: hadolint Dockerfile"
"$VENV/bin/hadolint" --failure-threshold info Dockerfile
echo "chart checks passed"
