"""HTTPS server with mutual TLS from the SPIFFE Workload API (Python stdlib ssl).

Env: SPIFFE_ENDPOINT_SOCKET (unix:///path), ALLOWED_CLIENT_IDS (comma list),
LISTEN_ADDR (default 127.0.0.1:8443).

Each accepted connection is wrapped with the SSLContext of the SVID in force at
that moment, so rotated certificates take effect without a restart.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mtls import SpiffeContexts, ids_from_env, spiffe_id_of

log = logging.getLogger("python-server")


class MtlsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, handler, contexts: SpiffeContexts, allowed: frozenset[str]):
        super().__init__(addr, handler)
        self.contexts = contexts
        self.allowed = allowed

    def get_request(self):
        sock, addr = self.socket.accept()
        material = self.contexts.current()
        sock.settimeout(10)
        # The handshake runs in the request's thread (see Handler.setup), not here.
        tls = material.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        tls.material = material
        return tls, addr

    def handle_error(self, request, client_address):
        err = sys.exc_info()[1]
        log.info("connection from %s refused: %s", client_address[0], err)


class Refused(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    server_version = "spiffe-example"

    def setup(self):
        # Certificate chain checked against the bundle by OpenSSL here...
        self.request.do_handshake()
        # ...and the SPIFFE ID against the allow-list before any request is read.
        self.peer_id = spiffe_id_of(self.request.getpeercert())
        if self.peer_id not in self.server.allowed:
            self.request.close()
            raise Refused(f"client spiffe id {self.peer_id} is not allowed")
        super().setup()

    def do_GET(self):
        peer = self.request.getpeercert()
        material = self.request.material
        body = json.dumps(
            {
                "server": "python",
                "server_id": material.spiffe_id,
                "server_serial": material.serial,
                "client_id": self.peer_id,
                "client_serial": peer.get("serialNumber"),
            }
        ).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.client_address[0], *args)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s python-server: %(message)s", stream=sys.stderr
    )
    allowed = ids_from_env("ALLOWED_CLIENT_IDS")
    host, _, port = os.environ.get("LISTEN_ADDR", "127.0.0.1:8443").rpartition(":")
    contexts = SpiffeContexts(server_side=True)
    server = MtlsHTTPServer((host, int(port)), Handler, contexts, allowed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("listening on https://%s:%s, accepting %s", host, port, ", ".join(sorted(allowed)))
    try:
        server.serve_forever()
    finally:
        server.server_close()
        contexts.close()


if __name__ == "__main__":
    main()
