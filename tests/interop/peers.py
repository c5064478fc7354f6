"""The implementations of the interop matrix, each in the roles it can play.

A server `start(spec)`s and returns its (host, port); `stop()` ends it and returns its evidence
(quicshard: its exit status and `--stats-file` counters; aioquic: what its TLS stack and qlog
saw). A client `run(spec, host, port, out)` downloads `spec.files` into `out` and returns
(error or None, evidence). The matrix compares the bytes and checks the evidence.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
HQ_PEER = [sys.executable, os.path.join(HERE, "aioquic_hq.py")]


@dataclass
class Spec:
    """What one cell asks of the server and the client."""
    files: list
    connections: int = 1  # one after another, each downloading every file
    parallel: int = 1  # clients at once
    retry: bool = False
    resume: bool = False
    zerortt: bool = False
    chacha: bool = False
    keyupdate: bool = False
    shards: int = 2
    host: str = "127.0.0.1"
    big_cert: bool = False
    timeout: float = 60
    server_args: list = field(default_factory=list)


@dataclass
class Env:
    """Paths every peer needs."""
    qs: str
    work: str
    root: str
    cert: str
    key: str
    big_cert: str
    big_key: str

    def certs(self, spec):
        return (self.big_cert, self.big_key) if spec.big_cert else (self.cert, self.key)

    def tmp(self, tag):
        d = os.path.join(self.work, f"{tag}-{time.monotonic_ns()}")
        os.makedirs(d)
        return d


def url(host, port, name):
    h = f"[{host}]" if ":" in host else host
    return f"https://{h}:{port}/{name}"


def start_announcing(cmd):
    """Starts a server that prints `listening on IP:PORT`; returns (process, port)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r} {proc.stderr.read()[-500:]}")
    return proc, int(line.strip().rsplit(":", 1)[1])


def terminate(proc, timeout=15):
    """SIGTERM and wait; the exit status (None if it had to be killed)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def free_port(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class QuicshardServer:
    name = "quicshard"

    def __init__(self, env):
        self.env = env

    def start(self, spec):
        cert, key = self.env.certs(spec)
        self.stats = os.path.join(self.env.tmp("stats"), "stats.json")
        cmd = [self.env.qs, "serve", "--listen", f"[{spec.host}]:0" if ":" in spec.host else f"{spec.host}:0",
               "--root", self.env.root, "--shards", str(spec.shards), "--cert", cert, "--key", key,
               "--stats-file", self.stats] + (["--retry"] if spec.retry else []) + spec.server_args
        self.proc, port = start_announcing(cmd)
        return spec.host, port

    def stop(self):
        rc = terminate(self.proc)
        stats = read_json(self.stats) or {"shards": []}
        total = {}
        for s in stats["shards"]:
            for k, v in s.items():
                if k != "shard":
                    total[k] = total.get(k, 0) + v
        return {"rc": rc, "total": total, "shards": stats["shards"], "stderr": self.proc.stderr.read()[-400:]}


class AioquicServer:
    name = "aioquic"

    def __init__(self, env):
        self.env = env

    def start(self, spec):
        cert, key = self.env.certs(spec)
        self.log = os.path.join(self.env.tmp("aioquic-server"), "log.json")
        listen = f"[{spec.host}]:0" if ":" in spec.host else f"{spec.host}:0"
        cmd = HQ_PEER + ["server", "--listen", listen, "--root", self.env.root, "--cert", cert,
                         "--key", key, "--log", self.log] + (["--retry"] if spec.retry else [])
        self.proc, port = start_announcing(cmd)
        return spec.host, port

    def stop(self):
        rc = terminate(self.proc)
        return {"rc": rc, "log": read_json(self.log), "stderr": self.proc.stderr.read()[-400:]}


class Ngtcp2Server:
    """ngtcp2's sample server (gtlsserver, GnuTLS): h3 only, no ready line, so a free port is
    picked first and the server is given a moment to bind (checked by the client's handshake)."""
    name = "ngtcp2"

    def __init__(self, env):
        self.env = env

    def start(self, spec):
        cert, key = self.env.certs(spec)
        port = free_port(spec.host)
        cmd = ["gtlsserver", "-q", "-d", self.env.root, spec.host, str(port), key, cert]
        if spec.retry:
            cmd.insert(1, "-V")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise RuntimeError(f"gtlsserver exited: {self.proc.stderr.read()[-300:]}")
        return spec.host, port

    def stop(self):
        terminate(self.proc)
        return {"rc": 0}


class AioquicClient:
    name = "aioquic"

    def __init__(self, env):
        self.env = env

    def run(self, spec, host, port, out):
        log = os.path.join(out, "..", f"aioquic-client-{os.path.basename(out)}.json")
        flags = [("--resume", spec.resume), ("--zero-rtt", spec.zerortt), ("--key-update", spec.keyupdate),
                 ("--chacha20", spec.chacha)]
        connections = max(spec.connections, 2 if spec.resume or spec.zerortt else 1)
        cmd = HQ_PEER + ["client", "--output", out, "--log", log, "--connections", str(spec.connections),
                         "--parallel", str(spec.parallel), "--timeout", str(spec.timeout)]
        cmd += [f for f, on in flags if on] + [url(host, port, n) for n in spec.files]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=spec.timeout * spec.connections + 30)
        err = None if r.returncode == 0 else f"aioquic client: {r.stderr.strip()[-300:]}"
        return err, {"log": read_json(log), "outputs": [(out, f".{j}" if j else "") for j in range(spec.parallel * connections)]}


def run_rounds(spec, out, command):
    """Runs `command(round, index, dir)` for `spec.parallel` clients at once, `spec.connections`
    rounds of them, each downloading into its own directory; (error or None, evidence)."""
    outputs = []
    for round_ in range(spec.connections):
        procs = []
        for i in range(spec.parallel):
            d = os.path.join(out, f"r{round_}-{i}")
            os.makedirs(d)
            outputs.append((d, ""))
            procs.append(subprocess.Popen(command(round_, i, d), stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
        for p in procs:
            try:
                _, stderr = p.communicate(timeout=spec.timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                return f"{p.args[0]}: no result in {spec.timeout} s", {"outputs": outputs}
            if p.returncode != 0:
                return f"{os.path.basename(p.args[0])}: exit {p.returncode}: {stderr.strip()[-300:]}", {"outputs": outputs}
    return None, {"outputs": outputs}


class QuicshardClient:
    """`quicshard get`: hq-interop, or h3 when `alpn` is set to it (for ngtcp2 servers)."""
    name = "quicshard"

    def __init__(self, env, alpn="hq-interop"):
        self.env = env
        self.alpn = alpn

    def run(self, spec, host, port, out):
        cert, _ = self.env.certs(spec)
        flags = [("--resume", spec.resume), ("--zero-rtt", spec.zerortt), ("--key-update", spec.keyupdate),
                 ("--chacha20", spec.chacha)]
        base = ([self.env.qs, "get", "--alpn", self.alpn, "--ca", cert] + [f for f, on in flags if on]
                + [url(host, port, n) for n in spec.files])
        return run_rounds(spec, out, lambda r, i, d: base + ["--output", d])


class Ngtcp2Client:
    """ngtcp2's sample client (gtlsclient): h3 only. --resume/--zero-rtt make a first connection
    that stores the session, then every client resumes it."""
    name = "ngtcp2"

    def __init__(self, env):
        self.env = env

    def run(self, spec, host, port, out):
        qlog = os.path.join(out, "qlog")
        os.makedirs(qlog)
        base = ["gtlsclient", "-q", "--exit-on-all-streams-close", "--qlog-dir", qlog, "--timeout", "30s"]
        if spec.chacha:
            base.append("--ciphers=NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305")
        urls = [host, str(port)] + [url(host, port, n) for n in spec.files]
        session = os.path.join(out, "session")
        if spec.resume or spec.zerortt:
            base += ["--session-file", session, "--tp-file", session + ".tp"]
            first = os.path.join(out, "first")
            os.makedirs(first)
            r = subprocess.run(base + ["--download", first] + urls, capture_output=True, text=True,
                               timeout=spec.timeout)
            if r.returncode != 0 or not os.path.exists(session):
                return f"gtlsclient (first connection): exit {r.returncode} {r.stderr[-300:]}", {"outputs": []}
        if not spec.zerortt:
            base.append("--disable-early-data")
        err, ev = run_rounds(spec, out, lambda r, i, d: base + ["--download", d] + urls)
        ev["qlog_dir"] = qlog
        return err, ev


def ngtcp2_available():
    return shutil.which("gtlsclient") is not None and shutil.which("gtlsserver") is not None


def quicshard_has_h3(qs):
    r = subprocess.run([qs, "get", "--help"], capture_output=True, text=True)
    return "--alpn" in r.stdout
