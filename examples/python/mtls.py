"""Python's ssl module fed from the SPIFFE Workload API.

py-spiffe's X509Source watches the Workload API and keeps the current X509-SVID
and trust bundles. The ssl module only loads certificates and keys from files,
so each update is written to a private temporary directory (0700, files 0600),
loaded into a fresh SSLContext, and deleted again. The SPIFFE ID of the peer is
read from the URI SAN of its certificate: Python's hostname check does not apply.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import tempfile
import threading
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from spiffe import X509Source

log = logging.getLogger("mtls")


def ids_from_env(name: str) -> frozenset[str]:
    """Reads a comma-separated allow-list of SPIFFE IDs; an empty list is an error."""
    raw = os.environ.get(name, "")
    ids = frozenset(part.strip() for part in raw.split(",") if part.strip())
    if not ids:
        raise SystemExit(f"{name} is not set: give a comma-separated list of SPIFFE IDs")
    for spiffe_id in ids:
        if not spiffe_id.startswith("spiffe://"):
            raise SystemExit(f"{name}: invalid SPIFFE ID {spiffe_id!r}")
    return ids


def spiffe_id_of(peercert: dict | None) -> str | None:
    """The single `spiffe://` URI SAN of a certificate from SSLSocket.getpeercert()."""
    if not peercert:
        return None
    uris = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    if len(uris) != 1 or not uris[0].startswith("spiffe://"):
        return None
    return uris[0]


@dataclass(frozen=True)
class Material:
    """One SVID loaded into an SSLContext."""

    context: ssl.SSLContext
    spiffe_id: str
    serial: str


class SpiffeContexts:
    """Keeps an SSLContext built from the current SVID, rebuilt on each rotation.

    `current()` returns the newest one; use it for each new connection. An
    SSLContext cannot be changed in place safely while handshakes use it, so a
    new one is made instead and old connections keep the one they started with.
    """

    def __init__(self, server_side: bool, source: X509Source | None = None) -> None:
        self._server_side = server_side
        # Reads SPIFFE_ENDPOINT_SOCKET; blocks until the first SVID arrives.
        self._source = source or X509Source(timeout_in_seconds=30)
        self._lock = threading.Lock()
        self._material = self._build()
        log.info(
            "identity %s, serial %s", self._material.spiffe_id, self._material.serial
        )
        self._source.subscribe_for_updates(self._on_update)

    def current(self) -> Material:
        with self._lock:
            return self._material

    def close(self) -> None:
        self._source.close()

    def _on_update(self) -> None:
        try:
            material = self._build()
        except Exception:  # keep serving with the previous SVID
            log.exception("could not load the new svid")
            return
        with self._lock:
            changed = material.serial != self._material.serial
            self._material = material
        if changed:
            log.info("svid updated: %s serial %s", material.spiffe_id, material.serial)

    def _build(self) -> Material:
        context = self._source.get_x509_context()
        svid = context.default_svid
        purpose = ssl.PROTOCOL_TLS_SERVER if self._server_side else ssl.PROTOCOL_TLS_CLIENT
        ctx = ssl.SSLContext(purpose)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # SPIFFE certificates name a workload by URI SAN, not by DNS name: the
        # peer's ID is checked by the caller after the handshake.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED

        tmp = tempfile.mkdtemp(prefix="svid-")  # mode 0700, owned by this process's user
        try:
            chain_path = os.path.join(tmp, "svid.pem")
            key_path = os.path.join(tmp, "svid.key")
            bundle_path = os.path.join(tmp, "bundle.pem")
            svid.save(chain_path, key_path, serialization.Encoding.PEM)
            os.chmod(chain_path, 0o600)
            fd = os.open(bundle_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                for bundle in context.x509_bundle_set.bundles:
                    for ca in bundle.x509_authorities:
                        out.write(ca.public_bytes(serialization.Encoding.PEM))
            ctx.load_cert_chain(chain_path, key_path)
            ctx.load_verify_locations(cafile=bundle_path)
        finally:
            # Loaded into memory: the key does not need to stay on disk.
            shutil.rmtree(tmp, ignore_errors=True)
        return Material(
            context=ctx,
            spiffe_id=str(svid.spiffe_id),
            serial=format(svid.leaf.serial_number, "x"),
        )
