"""Fetches X.509 material from a Workload API socket with py-spiffe (the `spiffe` package).

Proves that gRPC core's `:authority` (the socket path) is accepted by the server:

    python3 -m venv .cache/venv && .cache/venv/bin/pip install spiffe==0.3.2 grpcio
    cargo run -p workload-api --example static_agent -- /tmp/run/agent/api.sock &
    .cache/venv/bin/python workload-api/examples/py_spiffe_fetch.py /tmp/run/agent/api.sock
"""

import sys

from spiffe import WorkloadApiClient

client = WorkloadApiClient(socket_path="unix://" + sys.argv[1])
svid = client.fetch_x509_svid(timeout=10)
print("x509 svid:", svid.spiffe_id, "chain", len(svid.cert_chain))
ctx = client.fetch_x509_context(timeout=10)
print("x509 context svids:", [str(s.spiffe_id) for s in ctx.x509_svids])
bundles = client.fetch_x509_bundles(timeout=10)
print("x509 bundles:", [str(b.trust_domain) for b in bundles.bundles])
client.close()
