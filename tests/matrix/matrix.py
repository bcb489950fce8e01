#!/usr/bin/env python3
"""Cross-language mTLS matrix against the real mesh-agent.

Starts one mesh-agent (trust domain example.org) that gives every app its own
SPIFFE ID by Unix uid, a second one (other.org) for a foreign client, then:

1. mesh: every server (Java, Node, Go, Python, Rust) runs under its own
   uid; every client calls every server over mTLS, repeatedly for
   --rotation-seconds while the short-lived SVIDs rotate. Every call must pass;
   every server and every client must show at least two certificate serials.
2. negative: for every server, a client with an ID it does not accept, a client
   of another trust domain, a plaintext request and a TLS client without a
   certificate must all be refused.
3. jwt: the Node client fetches a JWT-SVID and calls the Java server's /jwt,
   which validates it with the agent and locally; a wrong audience and a
   missing token are refused.

Needs root (apps are started under other uids with setpriv), the examples
built by scripts/setup-examples.sh and the Rust example built by
`cargo build -p spiffe-example-mtls`. Standard library only. Exit status 0 only if
every check passed. See tests/matrix/README.md for the contract an app follows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
TD = "example.org"
FOREIGN_TD = "other.org"
JWT_AUDIENCE = "spiffe://example.org/java/server"

JAVA_FLAGS = [
    # A blocking entropy source can stall the first TLS handshake for minutes.
    "-Djava.security.egd=file:/dev/./urandom",
    # Quick start-up and small footprint on a 2-core machine.
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
]


@dataclass
class App:
    """One language: how to start its server and its client.

    `server` and `client` are argv lists; the client gets the URLs appended. Both
    read their settings from the environment (see README.md). `uid` is the
    server's uid; the client runs as uid + 1. `needs` lists files that must exist
    for the app to take part (`build` says how to make them); an `optional` app
    whose files are missing is shown as "n/a" instead of failing the run.
    """

    name: str
    uid: int
    server: list[str]
    client: list[str]
    needs: list[Path]
    optional: bool = False
    cwd: Path | None = None
    build: str = "run scripts/setup-examples.sh"

    @property
    def server_id(self) -> str:
        return f"spiffe://{TD}/{self.name}/server"

    @property
    def client_id(self) -> str:
        return f"spiffe://{TD}/{self.name}/client"

    def available(self) -> bool:
        return all(p.exists() for p in self.needs)


def apps() -> list[App]:
    """Every language in the matrix. Adding one is adding an entry here."""
    java_jar = ROOT / "examples/java/target/spiffe-example.jar"
    node_dir = ROOT / "examples/node"
    py = CACHE / "venv-examples/bin/python"
    py_dir = ROOT / "examples/python"
    bin_dir = CACHE / "examples/bin"
    rust_server = os.environ.get("MATRIX_RUST_SERVER", str(ROOT / "target/debug/spiffe-example-server"))
    rust_client = os.environ.get("MATRIX_RUST_CLIENT", str(ROOT / "target/debug/spiffe-example-client"))
    return [
        App("java", 2001, ["java", *JAVA_FLAGS, "-jar", str(java_jar), "server"],
            ["java", *JAVA_FLAGS, "-jar", str(java_jar), "client"], [java_jar]),
        App("node", 2011, ["node", str(node_dir / "server.js")], ["node", str(node_dir / "client.js")],
            [node_dir / "node_modules/@grpc/grpc-js"]),
        App("go", 2021, [str(bin_dir / "go-server")], [str(bin_dir / "go-client")],
            [bin_dir / "go-server", bin_dir / "go-client"]),
        App("python", 2031, [str(py), str(py_dir / "server.py")], [str(py), str(py_dir / "client.py")],
            [py], cwd=py_dir),
        # Rust: examples/rust-mtls (mesh-core TLS fed by the Workload API), or the
        # commands in MATRIX_RUST_SERVER / MATRIX_RUST_CLIENT.
        App("rust", 2041, [rust_server], [rust_client], [Path(rust_server), Path(rust_client)],
            build="cargo build -p spiffe-example-mtls"),
    ]


# uids of the negative-case clients (always the Go client: it reports whether it
# had verified the server, so a refusal is known to come from the server).
INTRUDER_UID = 2091  # example.org, but an ID no server accepts
FOREIGN_UID = 2092  # other.org, from the second agent
INTRUDER_ID = f"spiffe://{TD}/intruder"
FOREIGN_ID = f"spiffe://{FOREIGN_TD}/go/client"


class Failure(Exception):
    pass


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path


@dataclass
class Harness:
    agent_bin: Path
    work: Path
    ttl: str
    rotation_seconds: int
    verbose: bool
    procs: list[Proc] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    keepalive: str = ""
    passed: int = 0

    # ----------------------------------------------------------------- helpers

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
        return ok

    def home(self, uid: int) -> Path:
        home = self.work / "home" / str(uid)
        if not home.exists():
            home.mkdir(parents=True)
            os.chown(home, uid, uid)
        return home

    def env_for(self, uid: int, socket_path: Path, extra: dict[str, str]) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.home(uid)),
            "LANG": "C.UTF-8",
            "SPIFFE_ENDPOINT_SOCKET": f"unix://{socket_path}",
        }
        env.update(extra)
        return env

    def as_uid(self, uid: int, argv: list[str]) -> list[str]:
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Proc:
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        out = open(log, "wb")
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 cwd=str(cwd) if cwd else None, stdin=subprocess.DEVNULL)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()

    def tail(self, path: Path, lines: int = 25) -> str:
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])

    def run_client(self, name: str, uid: int, argv: list[str], socket_path: Path,
                   extra_env: dict[str, str], cwd: Path | None = None,
                   timeout: float = 120) -> list[dict]:
        """Runs a client to completion; returns its JSON result lines."""
        env = self.env_for(uid, socket_path, extra_env)
        log = self.work / "logs" / f"{name}.stderr.log"
        with open(log, "wb") as err:
            res = subprocess.run(self.as_uid(uid, argv), env=env, cwd=str(cwd) if cwd else None,
                                 stdout=subprocess.PIPE, stderr=err, timeout=timeout,
                                 stdin=subprocess.DEVNULL)
        (self.work / "logs" / f"{name}.jsonl").write_bytes(res.stdout)
        lines = []
        for line in res.stdout.decode(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    pass
        if self.verbose:
            print(f"--- {name} exit {res.returncode}, {len(lines)} results; stderr:\n{self.tail(log)}")
        if not lines and res.returncode != 0:
            print(f"  {name} exited {res.returncode} with no results; its log:\n{self.tail(log)}")
        return lines

    # ------------------------------------------------------------------ agents

    def start_agent(self, name: str, trust_domain: str, entries: list[tuple[str, int]]) -> Path:
        base = self.work / name
        (base / "run").mkdir(parents=True)
        os.chmod(base, 0o755)
        os.chmod(base / "run", 0o755)
        sock = base / "run" / "api.sock"
        config = base / "agent.toml"
        lines = [
            f'trust_domain = "{trust_domain}"',
            f'socket_path = "{sock}"',
            f'data_dir = "{base / "data"}"',
            f'svid_ttl = "{self.ttl}"',
            # Two agents run at once: each needs its own health/metrics port.
            f'admin_addr = "127.0.0.1:{free_port()}"',
        ]
        for spiffe_id, uid in entries:
            lines += ["", "[[entries]]", f'spiffe_id = "{spiffe_id}"', f'selectors = ["unix:uid:{uid}"]']
        config.write_text("\n".join(lines) + "\n")
        proc = self.start(name, [str(self.agent_bin), "run", "--config", str(config)],
                          env={**os.environ, "NO_COLOR": "1"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise Failure(f"{name} exited with {proc.popen.returncode}:\n{self.tail(proc.log)}")
            if sock.exists():
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(str(sock))
                    return sock
                except OSError:
                    pass
            time.sleep(0.1)
        raise Failure(f"{name}: socket {sock} not ready after 30 s:\n{self.tail(proc.log)}")

    # ------------------------------------------------------------- artifacts

    def readable_by(self, uid: int, path: Path) -> bool:
        res = subprocess.run(self.as_uid(uid, ["test", "-r", str(path)]), capture_output=True)
        return res.returncode == 0

    def stage_if_needed(self, app_list: list[App]) -> list[App]:
        """If the checkout is not readable by other users (a 0700 parent), copy
        what the apps run into the world-readable work dir and run that."""
        probe = ROOT / "examples"
        if self.readable_by(app_list[0].uid, probe / "node/server.js"):
            return app_list
        print("  checkout not readable by other uids: staging a copy of the examples")
        staged = self.work / "staged"
        mapping = {}
        dirs = [ROOT / "examples", CACHE / "venv-examples", CACHE / "examples"]
        for src in dirs:
            if src.exists():
                dst = staged / src.relative_to(ROOT)
                shutil.copytree(src, dst, symlinks=True,
                                ignore=shutil.ignore_patterns(".git"))
                mapping[str(src)] = str(dst)
        # Programs the apps need from elsewhere in the checkout (the Rust binaries in
        # target/), copied one by one.
        for app in app_list:
            for need in app.needs:
                if (need.is_file() and need.is_relative_to(ROOT)
                        and not any(need.is_relative_to(d) for d in dirs)):
                    dst = staged / need.relative_to(ROOT)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(need, dst)
                    mapping[str(need)] = str(dst)
        subprocess.run(["chmod", "-R", "a+rX", str(staged)], check=True)

        def remap(argv: list[str]) -> list[str]:
            out = []
            for arg in argv:
                for src, dst in mapping.items():
                    if arg.startswith(src):
                        arg = dst + arg[len(src):]
                out.append(arg)
            return out

        result = []
        for app in app_list:
            cwd = Path(remap([str(app.cwd)])[0]) if app.cwd else None
            result.append(App(app.name, app.uid, remap(app.server), remap(app.client), app.needs,
                              app.optional, cwd, app.build))
        return result

    # ------------------------------------------------------------------ phases

    def run(self) -> int:
        t_all = time.monotonic()
        all_apps = apps()
        active = [a for a in all_apps if a.available()]
        for app in all_apps:
            if not app.available():
                missing = [str(p) for p in app.needs if not p.exists()]
                if app.optional:
                    print(f"  {app.name}: not built ({', '.join(missing)}), shown as n/a")
                else:
                    self.failures.append(f"{app.name}: missing {', '.join(missing)} ({app.build})")
        if self.failures:
            return self.report(all_apps, active, {}, {}, {}, {}, t_all)
        active = self.stage_if_needed(active)

        t = time.monotonic()
        entries = []
        for app in active:
            entries += [(app.server_id, app.uid), (app.client_id, app.uid + 1)]
        entries.append((INTRUDER_ID, INTRUDER_UID))
        sock = self.start_agent("agent-example.org", TD, entries)
        foreign_sock = self.start_agent("agent-other.org", FOREIGN_TD, [(FOREIGN_ID, FOREIGN_UID)])
        self.timings["agents ready"] = time.monotonic() - t

        # ---- servers
        t = time.monotonic()
        ports = {}
        client_ids = ",".join(a.client_id for a in active)
        for app in active:
            port = free_port()
            ports[app.name] = port
            env = self.env_for(app.uid, sock, {
                "LISTEN_ADDR": f"127.0.0.1:{port}",
                "ALLOWED_CLIENT_IDS": client_ids,
                "JWT_AUDIENCE": JWT_AUDIENCE,
                "ALLOWED_JWT_IDS": f"spiffe://{TD}/node/client",
            })
            self.start(f"{app.name}-server", self.as_uid(app.uid, app.server), env=env, cwd=app.cwd)
        for app in active:
            self.wait_port(app.name, ports[app.name])
        self.timings["servers ready"] = time.monotonic() - t
        urls = {a.name: f"https://127.0.0.1:{ports[a.name]}/" for a in active}
        server_ids = ",".join(a.server_id for a in active)

        # ---- 1. mesh: every client calls every server while SVIDs rotate
        t = time.monotonic()
        running = {}
        for app in active:
            env = self.env_for(app.uid + 1, sock, {
                "ALLOWED_SERVER_IDS": server_ids,
                "REPEAT_FOR_SECONDS": str(self.rotation_seconds),
                "INTERVAL_MS": "1000",
            })
            out = open(self.work / "logs" / f"{app.name}-client.jsonl", "wb")
            err = open(self.work / "logs" / f"{app.name}-client.stderr.log", "wb")
            running[app.name] = subprocess.Popen(
                self.as_uid(app.uid + 1, app.client + [urls[s.name] for s in active]),
                env=env, cwd=str(app.cwd) if app.cwd else None, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL)
            self.procs.append(Proc(f"{app.name}-client", running[app.name],
                                   self.work / "logs" / f"{app.name}-client.stderr.log"))
        keepalive = None
        node = next((a for a in active if a.name == "node"), None)
        if node:
            # One long-lived connection to the Node server, open across its rotations.
            env = self.env_for(node.uid + 1, sock, {
                "ALLOWED_SERVER_IDS": node.server_id,
                "REPEAT_FOR_SECONDS": str(self.rotation_seconds),
                "INTERVAL_MS": "1000",
                "KEEP_ALIVE": "1",
            })
            keepalive = subprocess.Popen(
                self.as_uid(node.uid + 1, node.client + [urls["node"]]), env=env, cwd=node.cwd,
                stdout=open(self.work / "logs" / "node-keepalive.jsonl", "wb"),
                stderr=open(self.work / "logs" / "node-keepalive.stderr.log", "wb"),
                stdin=subprocess.DEVNULL)
            self.procs.append(Proc("node-keepalive", keepalive,
                                   self.work / "logs" / "node-keepalive.stderr.log"))
        mesh: dict[tuple[str, str], list[dict]] = {}
        for name, popen in running.items():
            try:
                popen.wait(timeout=self.rotation_seconds + 120)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
                self.failures.append(f"{name} client did not finish")
            for line in (self.work / "logs" / f"{name}-client.jsonl").read_text().splitlines():
                try:
                    res = json.loads(line)
                except ValueError:
                    continue
                for s in active:
                    if res.get("url") == urls[s.name]:
                        mesh.setdefault((name, s.name), []).append(res)
            if not any(k[0] == name for k in mesh):
                print(f"  {name} client printed no results (exit {popen.returncode}):\n"
                      f"{self.tail(self.work / 'logs' / f'{name}-client.stderr.log')}")
        self.timings["mesh + rotation"] = time.monotonic() - t
        rotation = self.check_mesh(active, mesh)
        if keepalive is not None:
            try:
                keepalive.wait(timeout=120)
            except subprocess.TimeoutExpired:
                keepalive.kill()
            self.keepalive = self.check_keepalive(mesh.get(("node", "node"), []))

        # ---- 2. negative cases
        t = time.monotonic()
        negative = self.negative_cases(active, sock, foreign_sock, urls)
        self.timings["negative cases"] = time.monotonic() - t

        # ---- 3. jwt
        t = time.monotonic()
        jwt = self.jwt_cases(active, sock, urls)
        self.timings["jwt"] = time.monotonic() - t

        return self.report(all_apps, active, mesh, rotation, negative, jwt, t_all)

    def wait_port(self, name: str, port: int) -> None:
        proc = next(p for p in self.procs if p.name == f"{name}-server")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise Failure(f"{name} server exited with {proc.popen.returncode}:\n{self.tail(proc.log)}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise Failure(f"{name} server not listening on {port} after 90 s:\n{self.tail(proc.log)}")

    def check_mesh(self, active: list[App], mesh) -> dict:
        """Checks every call of the mesh phase; returns rotation evidence per app."""
        server_serials: dict[str, set[int]] = {a.name: set() for a in active}
        client_serials: dict[str, set[int]] = {a.name: set() for a in active}
        for c in active:
            for s in active:
                results = mesh.get((c.name, s.name), [])
                if not results:
                    self.failures.append(f"{c.name} -> {s.name}: no call made")
                    continue
                for r in results:
                    ok = (r.get("ok") is True and r.get("server_id") == s.server_id
                          and r.get("client_id") == c.client_id)
                    if not self.check(ok, f"{c.name} -> {s.name}: {r.get('error') or r}"):
                        continue
                    if r.get("server_serial"):
                        server_serials[s.name].add(int(r["server_serial"], 16))
                    if r.get("client_serial"):
                        client_serials[c.name].add(int(r["client_serial"], 16))
        rotation = {}
        for a in active:
            rotation[a.name] = (len(server_serials[a.name]), len(client_serials[a.name]))
            self.check(len(server_serials[a.name]) >= 2,
                       f"{a.name} server: no rotation seen (serials {len(server_serials[a.name])})")
            self.check(len(client_serials[a.name]) >= 2,
                       f"{a.name} client: no rotation seen (serials {len(client_serials[a.name])})")
        return rotation

    def check_keepalive(self, fresh: list[dict]) -> str:
        """The keep-alive client's calls all went over one connection and all
        passed, while fresh connections made meanwhile saw the server's new SVID."""
        calls = []
        for line in (self.work / "logs" / "node-keepalive.jsonl").read_text().splitlines():
            try:
                calls.append(json.loads(line))
            except ValueError:
                pass
        failed = [c for c in calls if not c.get("ok")]
        ports = {c.get("local_port") for c in calls if c.get("ok")}
        serials = {int(c["server_serial"], 16) for c in calls if c.get("server_serial")}
        if not calls or failed or len(ports) != 1 or len(serials) != 1:
            what = (f"{len(calls)} calls, {len(failed)} failed, {len(ports)} connections, "
                    f"{len(serials)} serials; first failure: {failed[0].get('error') if failed else None}")
            self.failures.append(f"node keep-alive connection across rotation: {what}")
            return f"FAIL: {what}"
        held = serials.pop()
        t0, t1 = calls[0]["t"], calls[-1]["t"]
        newer = [r for r in fresh if r.get("ok") and t0 < r.get("t", 0) < t1
                 and int(r["server_serial"], 16) != held]
        if not newer:
            self.failures.append("node keep-alive: the server did not rotate while the connection was open")
            return "FAIL: no rotation while open"
        self.passed += 1
        return f"ok: {len(calls)} calls on one connection; server rotated meanwhile"

    def negative_cases(self, active: list[App], sock: Path, foreign_sock: Path,
                       urls: dict[str, str]) -> dict:
        go_client = next((a for a in active if a.name == "go"), None)
        results: dict[str, dict[str, str]] = {}
        server_ids = ",".join(a.server_id for a in active)
        target_urls = [urls[a.name] for a in active]
        if go_client is None:
            self.failures.append("negative cases need the go client")
            return results

        # The example.org bundle, so the foreign client can verify our servers
        # and the refusal can only come from the server.
        bundle = self.work / "example.org-bundle.pem"
        exporter = self.work / "home" / "bundle"
        exporter.mkdir(parents=True, exist_ok=True)
        os.chown(exporter, go_client.uid + 1, go_client.uid + 1)
        subprocess.run(self.as_uid(go_client.uid + 1, go_client.client + ["-write-bundle", str(exporter / "b.pem")]),
                       env=self.env_for(go_client.uid + 1, sock, {}), check=True, timeout=60,
                       stdout=subprocess.DEVNULL)
        shutil.copy(exporter / "b.pem", bundle)
        os.chmod(bundle, 0o644)

        cases = {
            "wrong SPIFFE ID": self.run_client(
                "intruder", INTRUDER_UID, go_client.client + target_urls, sock,
                {"ALLOWED_SERVER_IDS": server_ids}, cwd=go_client.cwd),
            "other trust domain": self.run_client(
                "foreign", FOREIGN_UID, go_client.client + target_urls, foreign_sock,
                {"ALLOWED_SERVER_IDS": server_ids, "EXTRA_BUNDLE_FILE": str(bundle),
                 "EXTRA_BUNDLE_TRUST_DOMAIN": TD}, cwd=go_client.cwd),
        }
        for case, lines in cases.items():
            row = {}
            for a in active:
                r = next((x for x in lines if x.get("url") == urls[a.name]), None)
                if r is None:
                    row[a.name] = "NO RESULT"
                    self.failures.append(f"{case} -> {a.name}: client printed no result")
                elif r.get("ok"):
                    row[a.name] = "ACCEPTED"
                    self.failures.append(f"{case} -> {a.name}: server accepted the call")
                elif r.get("server_id") != a.server_id:
                    row[a.name] = "INCONCLUSIVE"
                    self.failures.append(f"{case} -> {a.name}: the client did not verify the server, "
                                         f"so the refusal proves nothing: {r.get('error')}")
                else:
                    row[a.name] = "refused"
                    self.passed += 1
                if r is not None and self.verbose:
                    print(f"  {case} -> {a.name}: {r.get('error')}")
            results[case] = row

        row_plain, row_nocert = {}, {}
        for a in active:
            port = int(urls[a.name].rsplit(":", 1)[1].rstrip("/"))
            verdict, detail = plaintext_probe(port)
            row_plain[a.name] = verdict
            self.check(verdict == "refused", f"plaintext -> {a.name}: {detail}")
            if self.verbose:
                print(f"  plaintext -> {a.name}: {detail}")
            verdict, detail = no_cert_probe(port)
            row_nocert[a.name] = verdict
            self.check(verdict == "refused", f"TLS without client cert -> {a.name}: {detail}")
            if self.verbose:
                print(f"  no client cert -> {a.name}: {detail}")
        results["plaintext HTTP"] = row_plain
        results["TLS, no client cert"] = row_nocert
        return results

    def jwt_cases(self, active: list[App], sock: Path, urls: dict[str, str]) -> dict:
        names = {a.name for a in active}
        if not {"java", "node"} <= names:
            self.failures.append("jwt cases need the java server and the node client")
            return {}
        node = next(a for a in active if a.name == "node")
        java = next(a for a in active if a.name == "java")
        url = urls["java"] + "jwt"
        env = {"ALLOWED_SERVER_IDS": java.server_id}
        out = {}

        good = self.run_client("jwt-good", node.uid + 1, node.client + [url], sock,
                               {**env, "JWT_AUDIENCE": JWT_AUDIENCE}, cwd=node.cwd)
        r = good[0] if good else {}
        jwt = (r.get("response") or {}).get("jwt") or {}
        ok = (r.get("ok") is True and jwt.get("validated_by_agent") == node.client_id
              and jwt.get("validated_locally") == node.client_id)
        out["node client, JWT-SVID for the audience"] = (
            f"accepted (agent: {jwt.get('validated_by_agent')}, local: {jwt.get('validated_locally')})"
            if ok else f"FAILED: {r.get('error') or r}")
        self.check(ok, f"jwt: valid token not accepted: {r.get('error') or r}")

        bad = self.run_client("jwt-wrong-audience", node.uid + 1, node.client + [url], sock,
                              {**env, "JWT_AUDIENCE": "spiffe://example.org/someone-else"}, cwd=node.cwd)
        r = bad[0] if bad else {}
        ok = r.get("ok") is False and r.get("status") == 401
        out["node client, JWT-SVID for another audience"] = (
            "refused (401)" if ok else f"NOT REFUSED: {r}")
        self.check(ok, f"jwt: token for another audience not refused with 401: {r}")

        go = next((a for a in active if a.name == "go"), None)
        if go:
            none = self.run_client("jwt-missing", go.uid + 1, go.client + [url], sock, env, cwd=go.cwd)
            r = none[0] if none else {}
            ok = r.get("ok") is False and r.get("status") == 401
            out["go client, no token"] = "refused (401)" if ok else f"NOT REFUSED: {r}"
            self.check(ok, f"jwt: call without a token not refused with 401: {r}")
        return out

    # ------------------------------------------------------------------ report

    def report(self, all_apps, active, mesh, rotation, negative, jwt, t_all) -> int:
        names = [a.name for a in all_apps]
        live = {a.name for a in active}
        print()
        print("mTLS matrix: rows are clients, columns servers; cell = calls ok / calls made")
        header = ["client \\ server"] + names
        rows = []
        for c in names:
            row = [c]
            for s in names:
                if c not in live or s not in live:
                    row.append("n/a")
                    continue
                results = mesh.get((c, s), [])
                good = sum(1 for r in results if r.get("ok"))
                mark = "ok" if results and good == len(results) else "FAIL"
                row.append(f"{mark} {good}/{len(results)}")
            rows.append(row)
        print_table(header, rows)

        if rotation:
            print()
            print("rotation: distinct certificate serials seen during the mesh phase (need >= 2)")
            print_table(["app", "server serials", "client serials"],
                        [[n, str(rotation[n][0]), str(rotation[n][1])] if n in rotation else [n, "n/a", "n/a"]
                         for n in names])
        if self.keepalive:
            print()
            print(f"node server, one keep-alive connection across rotation: {self.keepalive}")
        if negative:
            print()
            print("negative cases: every server must refuse")
            print_table(["case"] + names,
                        [[case] + [row.get(n, "n/a") for n in names] for case, row in negative.items()])
        if jwt:
            print()
            print("JWT-SVID: node client -> java server /jwt (validated by the agent and locally)")
            print_table(["case", "result"], [[k, v] for k, v in jwt.items()])

        self.timings["total"] = time.monotonic() - t_all
        print()
        print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        if self.failures:
            print()
            print(f"FAILED: {len(self.failures)} problem(s)")
            for f in self.failures[:40]:
                print(f"  - {f}")
            if len(self.failures) > 40:
                print(f"  ... and {len(self.failures) - 40} more")
            print(f"logs kept in {self.work / 'logs'}")
        print(f"matrix: {self.passed} passed, {len(self.failures)} failed")
        return 1 if self.failures else 0


def plaintext_probe(port: int) -> tuple[str, str]:
    """A plain HTTP request to a TLS port must get no successful answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while len(data) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as err:
        return "refused", f"connection error {err}"
    first = data.split(b"\r\n", 1)[0]
    if first.startswith(b"HTTP/") and b" 2" in first[:13] or b"server_id" in data:
        return "ACCEPTED", f"answered {first!r}"
    return "refused", f"answered {first[:60]!r}"


def no_cert_probe(port: int) -> tuple[str, str]:
    """A TLS client that presents no certificate must not get an answer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we only test the server's side here
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                data = s.recv(4096)
    except (OSError, ssl.SSLError) as err:
        return "refused", f"error {err}"
    if data.startswith(b"HTTP/") and b" 2" in data[:13]:
        return "ACCEPTED", f"answered {data[:60]!r}"
    return "refused", f"answered {data[:60]!r}"


_HANDED_OUT: set[int] = set()


def _ephemeral_start() -> int:
    """First port of the kernel's range for outgoing connections and bind(0)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nobody listens on, below the kernel's ephemeral range.

    A port from bind(0) is free only until the socket closes: the kernel may hand it out
    again, to a later bind(0) or as the local port of any outgoing connection, before the
    app under test binds it ("Address already in use"). Ports below the ephemeral range are
    never chosen by the kernel, and each is handed out once per run.
    """
    high = min(_ephemeral_start(), 32768)
    if high <= 21000:
        raise RuntimeError(f"the ephemeral port range starts at {high}; no room below it")
    for _ in range(1000):
        port = random.randrange(20000, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free loopback port in 20000-{high}")


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    print(line)
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print(line)
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default=os.environ.get("MESH_AGENT", str(ROOT / "target/debug/mesh-agent")))
    parser.add_argument("--svid-ttl", default="20s", help="SVID lifetime; the agent renews at half-life")
    parser.add_argument("--rotation-seconds", type=int, default=25,
                        help="how long every client keeps calling every server")
    parser.add_argument("--keep", action="store_true", help="keep the work dir even on success")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()

    if os.geteuid() != 0:
        print("matrix: must run as root (apps run under their own uids via setpriv)", file=sys.stderr)
        return 2
    if not shutil.which("setpriv"):
        print("matrix: setpriv not found (apt-get install util-linux)", file=sys.stderr)
        return 2
    agent = Path(args.agent)
    if not os.access(agent, os.X_OK):
        print(f"matrix: no mesh-agent at {agent} (cargo build -p mesh-agent)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="mesh-matrix-"))
    os.chmod(work, 0o755)
    harness = Harness(agent, work, args.svid_ttl, args.rotation_seconds, args.verbose)
    code = 1
    try:
        code = harness.run()
    except Failure as err:
        print(f"FAILED: {err}")
        print(f"logs kept in {work / 'logs'}")
        print(f"matrix: {harness.passed} passed, {len(harness.failures) + 1} failed")
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        harness.stop_all()
        if code == 0 and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
