#!/usr/bin/env bash
# Runs every check and test of the project. This is the command CI runs (.ci/run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/scripts/setup.sh"
export MESH_TEST_PYTHON="$root/.cache/venv/bin/python"
# The proxy end-to-end test runs MariaDB traffic through a proxy pair; this installs MariaDB
# from the distribution if missing, starts it on loopback and exports MESH_TEST_MARIADB.
eval "$(bash "$root/scripts/start-mariadb.sh")"
# Property tests run a modest number of cases in CI; raise it locally to search harder.
export PROPTEST_CASES="${PROPTEST_CASES:-256}"

echo "== rustfmt"
cargo fmt --all -- --check

echo "== single crypto provider"
if cargo tree --workspace --locked -e normal,build,dev --prefix none | grep -q '^ring '; then
  echo "ring is linked; aws-lc-rs must be the only crypto provider:" >&2
  cargo tree --workspace --locked -e normal,build,dev -i ring >&2
  exit 1
fi

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo build --workspace --bins --locked
cargo test --workspace --locked

echo "== deploy manifests (Kubernetes schema validation, offline)"
bash "$root/scripts/validate-deploy.sh"

echo "== cross-language mtls matrix (Java, NodeJS, Go, Python and Rust against the real agent)"
bash "$root/tests/matrix/run.sh"
