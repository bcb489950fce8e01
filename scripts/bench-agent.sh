#!/usr/bin/env bash
# Builds the release mesh-agent and agent-bench binaries, runs the agent benchmark (start-up,
# Workload API latency, throughput, memory with 1,000 entries and streams, CA rotation
# fan-out) and writes the results into docs/benchmarks-agent.md between its result markers.
# Extra arguments go to agent-bench, e.g. `scripts/bench-agent.sh --only latency,streams`;
# `target/release/agent-bench --help` lists them. Takes about two minutes after the build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"

cargo build --release -p mesh-agent -p mesh-bench
exec "$target/release/agent-bench" --agent "$target/release/mesh-agent" \
  --out "$root/docs/benchmarks-agent.md" "$@"
