#!/usr/bin/env python3
"""Interop between quicshard and aioquic (hq-interop), both directions; prints one line per case
and a final `N passed, N failed`. Usage: run_aioquic.py QUICSHARD_BINARY"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, HERE)
from certs import make_cert  # noqa: E402

PEER = [sys.executable, os.path.join(HERE, "aioquic_hq.py")]
TIMEOUT = 60


def make_files(root):
    sizes = {"small.txt": 1000, "medium.bin": 1 << 20, "large.bin": 10 << 20}
    for name, size in sizes.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(os.urandom(size))
    return list(sizes)


def start_server(cmd):
    """Starts a server that prints `listening on IP:PORT`; returns (process, port)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r} {proc.stderr.read()[-500:]}")
    return proc, int(line.strip().rsplit(":", 1)[1])


def stop(proc):
    proc.terminate()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


def compare(root, out, names):
    for n in names:
        a, b = os.path.join(root, n), os.path.join(out, n)
        if not os.path.exists(b):
            return f"{n} missing"
        if open(a, "rb").read() != open(b, "rb").read():
            return f"{n} differs ({os.path.getsize(b)} of {os.path.getsize(a)} bytes)"
    return None


def case_aioquic_client(qs, root, names, work, extra):
    out = tempfile.mkdtemp(dir=work)
    proc, port = start_server([qs, "serve", "--listen", "127.0.0.1:0", "--root", root] + extra)
    try:
        urls = [f"https://127.0.0.1:{port}/{n}" for n in names]
        r = subprocess.run(PEER + ["client", "--output", out] + urls, capture_output=True, text=True, timeout=TIMEOUT)
        if r.returncode != 0:
            return f"aioquic client failed: {r.stderr.strip()[-300:]}"
        return compare(root, out, names)
    finally:
        if stop(proc) != 0:
            return "quicshard serve did not exit 0 on SIGTERM"


def case_quicshard_client(qs, root, names, work, cert, key, extra):
    out = tempfile.mkdtemp(dir=work)
    proc, port = start_server(PEER + ["server", "--listen", "127.0.0.1:0", "--root", root, "--cert", cert, "--key", key] + extra)
    try:
        urls = [f"https://localhost:{port}/{n}" for n in names]
        r = subprocess.run([qs, "get", "--ca", cert, "--output", out] + urls, capture_output=True, text=True, timeout=TIMEOUT)
        if r.returncode != 0:
            return f"quicshard get failed: {r.stderr.strip()[-300:]}"
        return compare(root, out, names)
    finally:
        stop(proc)


def case_echo(qs):
    proc, port = start_server([qs, "serve", "--listen", "127.0.0.1:0", "--shards", "2"])
    try:
        r = subprocess.run(PEER + ["echo", "--connect", f"127.0.0.1:{port}", "--streams", "16", "--size", "300000"],
                           capture_output=True, text=True, timeout=TIMEOUT)
        return None if r.returncode == 0 else f"aioquic echo client: {r.stderr.strip()[-300:]}"
    finally:
        stop(proc)


def case_takeover(qs, root, work):
    """An aioquic client downloads a large file from `quicshard serve --handover` while a second
    server takes over: the download finishes byte-exact on the old process, which was still
    serving it when replaced (its stats say so) and exits 0 by itself; a download started after
    the takeover finishes too."""
    name = "takeover.bin"
    with open(os.path.join(root, name), "wb") as f:
        f.write(os.urandom(48 << 20))
    sock = os.path.join(work, "handover.sock")
    stats_a = os.path.join(work, "takeover-a.json")
    serve = [qs, "serve", "--listen", "127.0.0.1:0", "--shards", "2", "--root", root,
             "--handover", sock, "--drain-timeout", "60"]
    a, port = start_server(serve + ["--stats-file", stats_a])
    b = None
    try:
        out = tempfile.mkdtemp(dir=work)
        client = subprocess.Popen(PEER + ["client", "--output", out, f"https://127.0.0.1:{port}/{name}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # the download runs for seconds: take over while it does (the checks below hold
        # whenever the takeover happens; the stats tell whether it was mid-download)
        time.sleep(0.5)
        b, port_b = start_server(serve)
        if port_b != port:
            return f"the successor serves port {port_b}, not {port}"
        _, err = client.communicate(timeout=TIMEOUT)
        if client.returncode != 0:
            return f"aioquic client failed across the takeover: {err.strip()[-300:]}"
        why = compare(root, out, [name])
        if why:
            return why
        try:
            rc = a.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return "the old server did not exit by itself"
        if rc != 0:
            return f"the old server exited {rc}: {a.stderr.read()[-300:]}"
        import json
        h = json.load(open(stats_a))["handover"]
        if not h["replaced"] or h["open_at_drain"] < 1 or h["closed_at_drain_timeout"] != 0:
            return f"the old server's handover stats: {h}"
        out2 = tempfile.mkdtemp(dir=work)
        r = subprocess.run(PEER + ["client", "--output", out2, f"https://127.0.0.1:{port}/small.txt"],
                           capture_output=True, text=True, timeout=TIMEOUT)
        if r.returncode != 0:
            return f"aioquic client after the takeover: {r.stderr.strip()[-300:]}"
        return compare(root, out2, ["small.txt"])
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                stop(p)


def run_cases(cases):
    """Runs (title, run) cases, where run() returns None or why it failed (an exception counts
    as a failure); prints a PASS/FAIL line each and the `N passed, N failed` total; returns the
    number failed."""
    passed = failed = 0
    for title, run in cases:
        t = time.monotonic()
        try:
            err = run()
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
        dt = time.monotonic() - t
        if err:
            failed += 1
            print(f"FAIL {title} ({dt:.1f} s): {err}", flush=True)
        else:
            passed += 1
            print(f"PASS {title} ({dt:.1f} s)", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return failed


def main():
    qs = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="qs-interop-")
    root = os.path.join(work, "www")
    os.makedirs(root)
    names = make_files(root)
    cert, key = make_cert(work)
    cases = [
        ("aioquic client <- quicshard serve (2 shards)", lambda: case_aioquic_client(qs, root, names, work, ["--shards", "2"])),
        ("aioquic client <- quicshard serve (4 shards, no BPF)", lambda: case_aioquic_client(qs, root, names, work, ["--shards", "4", "--no-bpf"])),
        ("aioquic client <- quicshard serve (retry)", lambda: case_aioquic_client(qs, root, names, work, ["--shards", "2", "--retry"])),
        ("aioquic echo client <- quicshard serve (16 streams x 300 kB)", lambda: case_echo(qs)),
        ("aioquic client <- quicshard serve across a takeover (48 MB)", lambda: case_takeover(qs, root, work)),
        ("quicshard get <- aioquic server", lambda: case_quicshard_client(qs, root, names, work, cert, key, [])),
        ("quicshard get <- aioquic server (retry)", lambda: case_quicshard_client(qs, root, names, work, cert, key, ["--retry"])),
    ]
    failed = run_cases(cases)
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
