"""HTTPS client with mutual TLS from the SPIFFE Workload API (Python stdlib ssl).

    python client.py URL...

Env: SPIFFE_ENDPOINT_SOCKET (unix:///path), ALLOWED_SERVER_IDS (comma list),
REPEAT_FOR_SECONDS (keep calling for that long; default one round),
INTERVAL_MS (between rounds, default 1000).
Prints one JSON line per call; exits 1 if any call failed.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import sys
import time
import urllib.parse

from mtls import SpiffeContexts, ids_from_env, spiffe_id_of


def call(url: str, contexts: SpiffeContexts, allowed: frozenset[str]) -> dict:
    start = time.monotonic()
    result: dict = {"client": "python", "url": url, "ok": False}
    parts = urllib.parse.urlsplit(url)
    # One connection per call, so each call shows the certificates in force.
    conn = http.client.HTTPSConnection(
        parts.hostname, parts.port or 443, context=contexts.current().context, timeout=10
    )
    try:
        conn.connect()  # handshake: chain verified against the trust bundle
        peer = conn.sock.getpeercert()
        server_id = spiffe_id_of(peer)
        if server_id not in allowed:
            raise PermissionError(f"server spiffe id {server_id} is not allowed")
        result["server_id"] = server_id
        result["server_serial"] = peer.get("serialNumber")
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        result["status"] = resp.status
        try:
            reply = json.loads(body)
            result["response"] = reply
            result["client_id"] = reply.get("client_id")
            result["client_serial"] = reply.get("client_serial")
        except ValueError:
            pass
        if resp.status == 200:
            result["ok"] = True
        else:
            result["error"] = f"status {resp.status}: {body.strip()}"
    except Exception as err:  # reported, not raised: the caller counts failures
        result["error"] = f"{type(err).__name__}: {err}"
    finally:
        conn.close()
        result["ms"] = int((time.monotonic() - start) * 1000)
    return result


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s python-client: %(message)s", stream=sys.stderr
    )
    urls = sys.argv[1:]
    if not urls:
        print("usage: client.py URL...", file=sys.stderr)
        return 2
    allowed = ids_from_env("ALLOWED_SERVER_IDS")
    repeat = float(os.environ.get("REPEAT_FOR_SECONDS", "0") or 0)
    interval = int(os.environ.get("INTERVAL_MS", "1000")) / 1000
    contexts = SpiffeContexts(server_side=False)
    deadline = time.monotonic() + repeat
    failures = 0
    try:
        while True:
            for url in urls:
                result = call(url, contexts, allowed)
                failures += 0 if result["ok"] else 1
                print(json.dumps(result), flush=True)
            if repeat <= 0 or time.monotonic() >= deadline:
                break
            time.sleep(interval)
    finally:
        contexts.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
