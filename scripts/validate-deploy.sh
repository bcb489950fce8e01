#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/ against the API schemas, offline.
#
# The `kubernetes-validate` PyPI package ships the JSON schemas of every Kubernetes release, so
# once it is installed (from PyPI, into .cache/) nothing is downloaded at validation time.
# Strict mode refuses unknown fields. The proxy configs inside the ConfigMaps are checked by the
# proxy's own loader in `cargo test -p mesh-agent` (deploy_manifests_carry_valid_proxy_configs).
#
#   scripts/validate-deploy.sh                 # against Kubernetes 1.30
#   K8S_VERSION=1.33.0 scripts/validate-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.cache/kubernetes-validate
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "kubernetes-validate==1.37.0"
fi
"$venv/bin/kubernetes-validate" --strict --quiet -k "${K8S_VERSION:-1.30.0}" deploy/*.yaml
echo "deploy/*.yaml: valid for Kubernetes ${K8S_VERSION:-1.30.0}"
