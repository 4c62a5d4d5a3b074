#!/usr/bin/env bash
# The chart and image checks of `make test` (target `chart`), offline once the tools are cached:
#   helm lint --strict and helm template for each values file (with an example site on top),
#   kubernetes-validate --strict on the rendered core objects, the KEDA objects against KEDA's
#   schema (scripts/keda-validate.mjs), and hadolint on the Dockerfile.
# Tools: scripts/install-chart-tools.sh (pinned, cached in .tools/; a no-op once installed).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${TOOLS:-.tools}
VENV=${VENV:-.venv}
KUBE_VERSION=${KUBE_VERSION:-1.32.0}
CHART=deploy/k8s/mati2sentinel

scripts/install-chart-tools.sh "$TOOLS" "$VENV"
HELM="$TOOLS/bin/helm"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# name | values files on top of the chart's values.yaml
variants=(
  "servicebus|$CHART/ci/site-values.yaml"
  "redis|$CHART/values-redis.yaml $CHART/ci/redis-site-values.yaml"
  "keyvault|$CHART/ci/keyvault-values.yaml"
)

for variant in "${variants[@]}"; do
  name=${variant%%|*}
  args=()
  for f in ${variant#*|}; do args+=(-f "$f"); done
  echo "chart[$name]: helm lint --strict, template, kubernetes-validate --strict -k $KUBE_VERSION, KEDA"
  "$HELM" lint --strict --quiet --kube-version "$KUBE_VERSION" "$CHART" "${args[@]}" >/dev/null \
    || { "$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CHART" "${args[@]}"; exit 1; }
  "$HELM" template m2s "$CHART" --namespace mati2sentinel --kube-version "$KUBE_VERSION" \
    "${args[@]}" > "$out/$name.yaml"
  # CRD kinds (KEDA, SecretProviderClass) have no schema there: KEDA is checked below.
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$KUBE_VERSION" "$out/$name.yaml" 2>&1 \
    | { grep -v "Couldn't find schema for kind \(ScaledObject\|TriggerAuthentication\|SecretProviderClass\) " || true; }
  KEDA_TOOLS_DIR="$TOOLS/node" node scripts/keda-validate.mjs "$out/$name.yaml"
done

echo "image: hadolint Dockerfile"
"$VENV/bin/hadolint" --failure-threshold info Dockerfile
echo "chart checks passed"
