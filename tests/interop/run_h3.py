#!/usr/bin/env python3
"""HTTP/3 interop: quicshard (serve, get --alpn h3) against aioquic's h3 client and server
(aioquic_h3.py) and ngtcp2's sample client and server (gtlsclient / gtlsserver, Debian packages
ngtcp2-client / ngtcp2-server). Cases: handshake (one small file), transfer (1 MiB + 10 MiB),
multiplexing (60 files on one connection), and http3 semantics (HEAD, 404 status, default ALPN
choice), and preferred-address (ngtcp2's client migrates to a shard's own port). Every downloaded file is compared byte for byte. Prints one line per case and a final
`N passed, N failed`; a peer that is not installed is reported as a failed case saying why.

Usage: run_h3.py QUICSHARD_BINARY
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from certs import make_cert  # noqa: E402
from run_aioquic import compare, run_cases, start_server, stop  # noqa: E402

H3_PEER = [sys.executable, os.path.join(HERE, "aioquic_h3.py")]
TIMEOUT = 60
MANY = [f"m{i:02}.bin" for i in range(60)]
FILES = {"small.txt": 1000, "medium.bin": 1 << 20, "large.bin": 10 << 20, **{n: 5000 + 37 * i for i, n in enumerate(MANY)}}
CASES = {"handshake": ["small.txt"], "transfer": ["medium.bin", "large.bin"], "multiplexing": MANY}


def make_files(root):
    for name, size in FILES.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(os.urandom(size))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def urls(port, names, host="localhost"):
    return [f"https://{host}:{port}/{n}" for n in names]


class Env:
    def __init__(self, qs):
        self.qs = qs
        self.work = tempfile.mkdtemp(prefix="qs-h3-interop-")
        self.root = os.path.join(self.work, "www")
        os.makedirs(self.root)
        make_files(self.root)
        self.cert, self.key = make_cert(self.work)

    def out(self):
        return tempfile.mkdtemp(dir=self.work)

    def serve(self, *extra):
        return start_server([self.qs, "serve", "--listen", "127.0.0.1:0", "--root", self.root, "--shards", "2",
                             "--cert", self.cert, "--key", self.key, *extra])

    def get(self, port, names, out, alpn=("--alpn", "h3")):
        return subprocess.run([self.qs, "get", "--ca", self.cert, *alpn, "--output", out] + urls(port, names),
                              capture_output=True, text=True, timeout=TIMEOUT)


def with_quicshard_server(env, body, *extra):
    """Runs body(port) against `quicshard serve` (with `extra` flags); a non-zero exit on SIGTERM
    fails the case."""
    proc, port = env.serve(*extra)
    try:
        err = body(port)
    finally:
        rc = stop(proc)
    return err or (None if rc == 0 else f"quicshard serve exited {rc} on SIGTERM")


# --- aioquic h3 client -> quicshard serve ---------------------------------------------------

def aioquic_client(env, names, method="GET", expect=200):
    def body(port):
        out = env.out()
        r = subprocess.run(H3_PEER + ["client", "--output", out, "--method", method, "--expect-status", str(expect)]
                           + urls(port, names), capture_output=True, text=True, timeout=TIMEOUT)
        if r.returncode != 0:
            return f"aioquic h3 client: {r.stderr.strip()[-300:]}"
        if method == "HEAD":
            # `STATUS CONTENT-LENGTH URL` lines: the length must be the file's
            for line in r.stdout.splitlines():
                _, length, url = line.split()
                want = os.path.getsize(os.path.join(env.root, url.rsplit("/", 1)[1]))
                if length != str(want):
                    return f"HEAD {url}: content-length {length}, file has {want} bytes"
            return None
        return compare(env.root, out, names) if expect == 200 else None
    return with_quicshard_server(env, body)


# --- quicshard get -> aioquic h3 server ------------------------------------------------------

def aioquic_server(env, body):
    proc, port = start_server(H3_PEER + ["server", "--listen", "127.0.0.1:0", "--root", env.root,
                                         "--cert", env.cert, "--key", env.key])
    try:
        return body(port)
    finally:
        stop(proc)


def quicshard_get(env, names, alpn=("--alpn", "h3")):
    def body(port):
        out = env.out()
        r = env.get(port, names, out, alpn)
        if r.returncode != 0:
            return f"quicshard get: {r.stderr.strip()[-300:]}"
        if "(h3)" not in r.stderr:
            return f"quicshard get did not use h3: {r.stderr.strip()[-200:]}"
        return compare(env.root, out, names)
    return body


def quicshard_get_404(env):
    def body(port):
        r = env.get(port, ["small.txt", "missing.bin"], env.out())
        if r.returncode == 0:
            return "quicshard get exited 0 although a file was missing"
        if "404" not in r.stderr:
            return f"no 404 status printed: {r.stderr.strip()[-200:]}"
        return None
    return body


# --- ngtcp2 -----------------------------------------------------------------------------------

def ngtcp2_missing():
    missing = [b for b in ("gtlsclient", "gtlsserver") if shutil.which(b) is None]
    if not missing:
        return None
    how = "run as root so scripts/test can apt-get install ngtcp2-client ngtcp2-server" if os.geteuid() != 0 \
        else "apt-get install ngtcp2-client ngtcp2-server failed"
    return f"{', '.join(missing)} not installed ({how})"


def gtlsclient_download(env, names):
    """body(port): gtlsclient downloads `names` from the server on `port`; files compared."""
    def body(port):
        out = env.out()
        r = subprocess.run(["gtlsclient", "-q", "--exit-on-all-streams-close", "--download", out,
                            "127.0.0.1", str(port)] + urls(port, names), capture_output=True, text=True, timeout=TIMEOUT)
        if r.returncode != 0:
            return f"gtlsclient: exit {r.returncode} {r.stderr.strip()[-300:]}"
        return compare(env.root, out, names)
    return body


def ngtcp2_client(env, names):
    why = ngtcp2_missing()
    if why:
        return why
    return with_quicshard_server(env, gtlsclient_download(env, names))


def ngtcp2_client_preferred_address(env, names):
    """gtlsclient migrates to the server's preferred address (each shard's own port) after the
    handshake; the files must arrive whole and serve's counters must show the move."""
    why = ngtcp2_missing()
    if why:
        return why
    stats = os.path.join(env.out(), "stats.json")
    err = with_quicshard_server(env, gtlsclient_download(env, names), "--preferred-address", "--stats-file", stats)
    if err:
        return err
    with open(stats) as f:
        moves = sum(s["preferred_address_moves"] for s in json.load(f)["shards"])
    return None if moves >= 1 else "no connection moved to a shard's preferred address"


def ngtcp2_server(env, names):
    why = ngtcp2_missing()
    if why:
        return why
    port = free_port()
    # no ready line: quicshard get's handshake retransmits until the server has bound its port
    proc = subprocess.Popen(["gtlsserver", "-q", "-d", env.root, "127.0.0.1", str(port), env.key, env.cert],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        err = quicshard_get(env, names)(port)
        if err and proc.poll() is not None:
            err += f"; gtlsserver exited {proc.returncode}: {proc.stderr.read()[-200:]}"
        return err
    finally:
        stop(proc)


def main():
    env = Env(os.path.abspath(sys.argv[1]))
    cases = []
    for kind, names in CASES.items():
        cases.append((f"{kind}: aioquic h3 client <- quicshard serve", lambda n=names: aioquic_client(env, n)))
    cases += [
        ("http3: aioquic h3 client HEAD <- quicshard serve", lambda: aioquic_client(env, ["large.bin", "small.txt"], "HEAD")),
        ("http3: aioquic h3 client 404 <- quicshard serve", lambda: aioquic_client(env, ["missing.bin", "../etc/passwd"], expect=404)),
    ]
    for kind, names in CASES.items():
        cases.append((f"{kind}: quicshard get --alpn h3 <- aioquic h3 server",
                      lambda n=names: aioquic_server(env, quicshard_get(env, n))))
    cases += [
        ("http3: quicshard get (default ALPN) <- aioquic h3 server",
         lambda: aioquic_server(env, quicshard_get(env, ["small.txt", "medium.bin"], alpn=()))),
        ("http3: quicshard get prints 404 <- aioquic h3 server", lambda: aioquic_server(env, quicshard_get_404(env))),
        ("http3: quicshard get (default ALPN) <- quicshard serve",
         lambda: with_quicshard_server(env, quicshard_get(env, ["small.txt", "large.bin"], alpn=()))),
        ("http3: quicshard get prints 404 <- quicshard serve", lambda: with_quicshard_server(env, quicshard_get_404(env))),
    ]
    for kind, names in CASES.items():
        cases.append((f"{kind}: ngtcp2 gtlsclient <- quicshard serve", lambda n=names: ngtcp2_client(env, n)))
        cases.append((f"{kind}: quicshard get --alpn h3 <- ngtcp2 gtlsserver", lambda n=names: ngtcp2_server(env, n)))
    cases.append(("preferred-address: ngtcp2 gtlsclient migrates <- quicshard serve --preferred-address",
                  lambda: ngtcp2_client_preferred_address(env, ["small.txt", "large.bin"])))
    failed = run_cases(cases)
    shutil.rmtree(env.work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
