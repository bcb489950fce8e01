"""Fetches identities from a Workload API socket with py-spiffe and prints what it got.

Usage: python fetch.py /path/to/api.sock

Prints one `name: value` line per fact; tests/tests/processes.rs runs it against a real agent
whose only entry matches the caller and whose SVIDs live a few seconds, and checks every line.
Exits non-zero on any error.
"""

import sys
import threading

from spiffe import JwtSvid, TrustDomain, WorkloadApiClient
from spiffe.workloadapi.errors import ValidateJwtSvidError

TIMEOUT = 20


def main(socket_path: str) -> None:
    client = WorkloadApiClient(socket_path="unix://" + socket_path, default_timeout=TIMEOUT)
    try:
        context = client.fetch_x509_context()
        svid = context.default_svid
        print(f"x509_spiffe_id: {svid.spiffe_id}")
        print(f"x509_chain_length: {len(svid.cert_chain)}")
        domains = sorted(b.trust_domain.name for b in context.x509_bundle_set.bundles)
        print(f"x509_bundle_trust_domains: {','.join(domains)}")

        jwt = client.fetch_jwt_svid(audience={"billing", "audit"})
        print(f"jwt_subject: {jwt.spiffe_id}")
        print(f"jwt_audience: {','.join(sorted(jwt.audience))}")

        validated = client.validate_jwt_svid(jwt.token, "billing")
        print(f"jwt_validated_by_agent: {validated.spiffe_id}")

        bundles = client.fetch_jwt_bundles()
        bundle = bundles.get_bundle_for_trust_domain(TrustDomain(str(svid.spiffe_id.trust_domain)))
        local = JwtSvid.parse_and_validate(jwt.token, bundle, {"audit"})
        print(f"jwt_validated_locally: {local.spiffe_id}")

        try:
            client.validate_jwt_svid(jwt.token, "payroll")
            print("jwt_wrong_audience: accepted")
        except ValidateJwtSvidError:
            print("jwt_wrong_audience: rejected")

        print(f"x509_stream_renewed: {'yes' if watch_renewal(client) else 'no'}")
    finally:
        client.close()


def watch_renewal(client: WorkloadApiClient) -> bool:
    """Watches the X.509 stream until it delivers an SVID other than the first it sent."""
    serials = []
    renewed = threading.Event()
    failed = []

    def on_success(context) -> None:
        serials.append(context.default_svid.leaf.serial_number)
        if len(set(serials)) > 1:
            renewed.set()

    def on_error(error: Exception) -> None:
        failed.append(error)
        renewed.set()

    handle = client.stream_x509_contexts(on_success, on_error, retry_connect=False)
    renewed.wait(TIMEOUT)
    handle.cancel()
    if failed:
        raise failed[0]
    return len(set(serials)) > 1


if __name__ == "__main__":
    main(sys.argv[1])
