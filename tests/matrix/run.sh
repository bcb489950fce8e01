#!/usr/bin/env bash
# Cross-language mTLS test: installs and builds the examples (scripts/setup-examples.sh),
# runs the Node and Python examples' unit tests, then tests/matrix/matrix.py against
# target/debug/mesh-agent (build it first: cargo build -p mesh-agent). Must run as root.
# Extra arguments go to matrix.py (--svid-ttl, --rotation-seconds, --keep, -v).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bash "$root/scripts/setup-examples.sh"
echo "== node example unit tests"
(cd "$root/examples/node" && node --test test/ 2>&1 | grep -E '^# (tests|pass|fail)')
echo "== python example unit tests"
(cd "$root/examples/python" && "$root/.cache/venv-examples/bin/python" -m unittest -q test_mtls)
echo "== cross-language mtls matrix"
exec python3 "$root/tests/matrix/matrix.py" "$@"
