"""Unit tests of mtls.py: certificates made at test time, a stand-in for X509Source.

Run: python -m unittest -v test_mtls   (from examples/python, with the requirements installed)
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import tempfile
import threading
import unittest
from unittest import mock

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from spiffe import SpiffeId, TrustDomain, X509Bundle, X509Svid
from spiffe.bundle.x509_bundle.x509_bundle_set import X509BundleSet
from spiffe.workloadapi.x509_context import X509Context

import mtls


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, text)])


def make_ca(td: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(td))
        .issuer_name(_name(td))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{td}")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_svid(ca_key, ca_cert, spiffe_id: str) -> X509Svid:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("workload"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return X509Svid(SpiffeId(spiffe_id), [cert], key)


class FakeSource:
    """What SpiffeContexts uses of X509Source: a context and update callbacks."""

    def __init__(self, svid: X509Svid, bundles: list[X509Bundle]) -> None:
        self.context = X509Context([svid], X509BundleSet.of(bundles))
        self.callbacks = []

    def get_x509_context(self) -> X509Context:
        return self.context

    def subscribe_for_updates(self, callback) -> None:
        self.callbacks.append(callback)

    def rotate(self, svid: X509Svid) -> None:
        self.context = X509Context([svid], self.context.x509_bundle_set)
        for cb in self.callbacks:
            cb()

    def close(self) -> None:
        pass


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext):
    """Runs a TLS handshake over a socket pair; returns both peers' certificates."""
    a, b = socket.socketpair()
    result = {}

    def serve():
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                result["server_saw"] = s.getpeercert()
                s.sendall(b"x")
        except (ssl.SSLError, OSError) as err:
            result["server_error"] = err

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b) as c:
            result["client_saw"] = c.getpeercert()
            c.recv(1)
    except (ssl.SSLError, OSError) as err:
        result["client_error"] = err
    t.join(5)
    return result


class SpiffeIdOfTest(unittest.TestCase):
    def test_reads_the_single_spiffe_uri(self):
        cert = {"subjectAltName": (("DNS", "x"), ("URI", "spiffe://example.org/a"))}
        self.assertEqual(mtls.spiffe_id_of(cert), "spiffe://example.org/a")

    def test_refuses_two_uris_a_non_spiffe_uri_or_nothing(self):
        two = {"subjectAltName": (("URI", "spiffe://a.org/x"), ("URI", "spiffe://a.org/y"))}
        self.assertIsNone(mtls.spiffe_id_of(two))
        self.assertIsNone(mtls.spiffe_id_of({"subjectAltName": (("URI", "https://a.org/x"),)}))
        self.assertIsNone(mtls.spiffe_id_of({}))
        self.assertIsNone(mtls.spiffe_id_of(None))


class IdsFromEnvTest(unittest.TestCase):
    def test_parses_a_comma_separated_list(self):
        with mock.patch.dict(os.environ, {"X_IDS": "spiffe://a.org/x, spiffe://a.org/y,"}):
            self.assertEqual(mtls.ids_from_env("X_IDS"), {"spiffe://a.org/x", "spiffe://a.org/y"})

    def test_rejects_an_empty_list_and_a_bad_id(self):
        with mock.patch.dict(os.environ, {"X_IDS": " "}):
            self.assertRaises(SystemExit, mtls.ids_from_env, "X_IDS")
        with mock.patch.dict(os.environ, {"X_IDS": "spiffe://a.org/x,a.org/y"}):
            self.assertRaises(SystemExit, mtls.ids_from_env, "X_IDS")


class SpiffeContextsTest(unittest.TestCase):
    def setUp(self):
        self.ca_key, self.ca = make_ca("example.org")
        self.bundle = X509Bundle(TrustDomain("example.org"), {self.ca})
        self.server_src = FakeSource(
            make_svid(self.ca_key, self.ca, "spiffe://example.org/server"), [self.bundle])
        self.client_src = FakeSource(
            make_svid(self.ca_key, self.ca, "spiffe://example.org/client"), [self.bundle])

    def test_contexts_from_the_same_bundle_complete_a_mutual_handshake(self):
        server = mtls.SpiffeContexts(server_side=True, source=self.server_src)
        client = mtls.SpiffeContexts(server_side=False, source=self.client_src)
        r = handshake(server.current().context, client.current().context)
        self.assertNotIn("client_error", r)
        self.assertEqual(mtls.spiffe_id_of(r["client_saw"]), "spiffe://example.org/server")
        self.assertEqual(mtls.spiffe_id_of(r["server_saw"]), "spiffe://example.org/client")

    def test_a_client_of_another_ca_is_refused(self):
        other_key, other_ca = make_ca("other.org")
        foreign = FakeSource(make_svid(other_key, other_ca, "spiffe://other.org/client"),
                             [self.bundle, X509Bundle(TrustDomain("other.org"), {other_ca})])
        server = mtls.SpiffeContexts(server_side=True, source=self.server_src)
        client = mtls.SpiffeContexts(server_side=False, source=foreign)
        r = handshake(server.current().context, client.current().context)
        self.assertIn("server_error", r)
        self.assertIn("CERTIFICATE_VERIFY_FAILED", str(r["server_error"]))

    def test_rotation_builds_a_new_context_with_the_new_serial(self):
        server = mtls.SpiffeContexts(server_side=True, source=self.server_src)
        before = server.current()
        new = make_svid(self.ca_key, self.ca, "spiffe://example.org/server")
        self.server_src.rotate(new)
        after = server.current()
        self.assertIsNot(before.context, after.context)
        self.assertEqual(after.serial, format(new.leaf.serial_number, "x"))
        client = mtls.SpiffeContexts(server_side=False, source=self.client_src)
        r = handshake(after.context, client.current().context)
        self.assertEqual(r["client_saw"]["serialNumber"].lower().lstrip("0"), after.serial.lstrip("0"))

    def test_no_key_file_is_left_on_disk(self):
        tmp = tempfile.mkdtemp()
        try:
            with mock.patch.dict(os.environ, {"TMPDIR": tmp}):
                tempfile.tempdir = None  # re-read TMPDIR
                mtls.SpiffeContexts(server_side=True, source=self.server_src)
            self.assertEqual(os.listdir(tmp), [])
        finally:
            tempfile.tempdir = None
            os.rmdir(tmp)

    def test_key_and_chain_are_written_owner_only(self):
        modes = {}
        real_load = ssl.SSLContext.load_cert_chain

        def spy(ctx, certfile, keyfile=None, password=None):
            modes["dir"] = os.stat(os.path.dirname(keyfile)).st_mode & 0o777
            modes["key"] = os.stat(keyfile).st_mode & 0o777
            modes["chain"] = os.stat(certfile).st_mode & 0o777
            return real_load(ctx, certfile, keyfile, password)

        with mock.patch.object(ssl.SSLContext, "load_cert_chain", spy):
            mtls.SpiffeContexts(server_side=True, source=self.server_src)
        self.assertEqual(modes, {"dir": 0o700, "key": 0o600, "chain": 0o600})


if __name__ == "__main__":
    unittest.main()
