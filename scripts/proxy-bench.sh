#!/usr/bin/env bash
# Benchmarks the sidecar proxy against plain TCP and stunnel on loopback, in one run, and writes
# the results with the command and the machine to docs/benchmarks-proxy.md.
#
#   scripts/proxy-bench.sh            # 256 MiB per throughput test
#   MB=64 scripts/proxy-bench.sh      # shorter
#
# Builds in release mode (slow on a small machine: do it once). Needs stunnel4 (installed
# with apt-get when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v stunnel4 >/dev/null && ! command -v stunnel >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq stunnel4 >/dev/null
    else
        echo "stunnel4 is missing: apt-get install -y stunnel4" >&2
        exit 1
    fi
fi

cargo build --release -p mesh-agent --bin mesh-agent
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# cargo runs a bench in its package folder, so the agent path must be absolute.
agent="${CARGO_TARGET_DIR:-$PWD/target}/release/mesh-agent"
cargo bench -p mesh-agent --features proxy-bench --bench proxy -- --agent "$agent" --mb "${MB:-256}" --out "$out"

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
    echo "# Sidecar proxy benchmark"
    echo
    echo "Command: \`scripts/proxy-bench.sh\` (MB=${MB:-256}); release build; $(date -u +%Y-%m-%d)."
    echo "Machine: $(nproc) CPUs, ${cpu}; $(uname -sr); $(stunnel4 -version 2>&1 | grep -m1 '^stunnel' || true)."
    echo
    echo "Everything runs on this one machine over loopback: the load generator and the backend"
    echo "(one process), a \`mesh-agent\` for the identity, two proxy processes (outbound and"
    echo "inbound) and two stunnel processes. Both pairs use the same X509-SVID (EC P-256) and"
    echo "bundle, TLS 1.3, mutual authentication, no session resumption, TCP_NODELAY."
    echo "The mesh pair also checks the peer's SPIFFE ID; stunnel only verifies the chain."
    echo
    cat "$out"
} > docs/benchmarks-proxy.md
echo "wrote docs/benchmarks-proxy.md"
