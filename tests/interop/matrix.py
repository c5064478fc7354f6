#!/usr/bin/env python3
"""The interop matrix: every case of cases.py for every pairing of a server and a client, each cell
pass, fail (why) or unsupported (why), written as a Markdown table.

  matrix.py QUICSHARD_BINARY [--quick] [--output docs/INTEROP.md] [--cases a,b] [--pairings x,y]

Pairings are SERVER<-CLIENT: quicshard<-aioquic, aioquic<-quicshard, quicshard<-ngtcp2,
ngtcp2<-quicshard, quicshard<-quicshard. Prints one line per cell, then `N passed, N failed` and
one `unsupported:` line per unsupported cell; exits 1 if a cell failed.
"""
import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cases as casemod  # noqa: E402
import peers  # noqa: E402
from certs import make_cert  # noqa: E402
from netsim import Relay  # noqa: E402

PAIRINGS = [
    ("quicshard", "aioquic"), ("aioquic", "quicshard"), ("quicshard", "ngtcp2"),
    ("ngtcp2", "quicshard"), ("quicshard", "quicshard"),
]
SERVERS = {"quicshard": peers.QuicshardServer, "aioquic": peers.AioquicServer, "ngtcp2": peers.Ngtcp2Server}
CLIENTS = {"quicshard": peers.QuicshardClient, "aioquic": peers.AioquicClient, "ngtcp2": peers.Ngtcp2Client}
# The impairment proxy's seed: every run makes the same loss decisions.
IMPAIR_SEED = "7"


def make_files(root):
    sizes = {casemod.SMALL: 1000, casemod.MEDIUM: 1 << 20, casemod.LARGE: 10 << 20, casemod.MULTI_FILE: 100_000}
    for name, size in sizes.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(os.urandom(size))
    os.makedirs(os.path.join(root, "many"))
    for i, name in enumerate(casemod.MANY):
        with open(os.path.join(root, name), "wb") as f:
            f.write(os.urandom(100 + i % 900))


def compare(root, outputs, names):
    """None if every output directory holds every file byte for byte, else why not."""
    for out, suffix in outputs:
        for n in names:
            # a client saves a file under its URL path (quicshard get) or its base name
            got = os.path.join(out, n + suffix)
            if not os.path.exists(got):
                got = os.path.join(out, os.path.basename(n) + suffix)
            if not os.path.exists(got):
                return f"{os.path.basename(got)} missing"
            with open(os.path.join(root, n), "rb") as a, open(got, "rb") as b:
                if a.read() != b.read():
                    return f"{n} differs ({os.path.getsize(got)} of {os.path.getsize(a.name)} bytes)"
    return None


def parse_impair(stderr):
    """{"up": {counter: n}, "down": {...}} from the proxy's exit lines."""
    out = {}
    for line in stderr.splitlines():
        m = re.match(r"(up|down): (.*)", line.strip())
        if m:
            out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return out


def start_impair(env, host, port, flags):
    h = f"[{host}]" if ":" in host else host
    cmd = [env.qs, "impair", "--listen", f"{h}:0", "--forward", f"{h}:{port}", "--seed", IMPAIR_SEED] + flags
    return peers.start_announcing(cmd)


def run_cell(env, case, server_name, client_name, quick):
    """(status, detail, Mbit/s or None): status is pass, fail or unsupported."""
    why = case.unsupported(server_name, client_name)
    if why:
        return "unsupported", why, None
    spec = case.spec(quick)
    server = SERVERS[server_name](env)
    if client_name == "quicshard":
        client = peers.QuicshardClient(env, alpn="h3" if server_name == "ngtcp2" else "hq-interop")
    else:
        client = CLIENTS[client_name](env)
    host, port = server.start(spec)
    relay = impair = None
    try:
        if case.relay is not None:
            relay = Relay((host, port), listen_host=host, **case.relay)
            port = relay.port
        elif case.impair:
            impair, port = start_impair(env, host, port, case.impair)
        out = env.tmp("out")
        t0 = time.monotonic()
        err, cev = client.run(spec, host, port, out)
        elapsed = time.monotonic() - t0
    finally:
        rev = relay.stop() if relay else None
        iev = None
        if impair:
            peers.terminate(impair)
            iev = parse_impair(impair.stderr.read())
        sev = server.stop()
    if err:
        return "fail", err, None
    if sev.get("rc") != 0:
        return "fail", f"{server_name} server exit status {sev.get('rc')}: {sev.get('stderr', '')[-200:]}", None
    bad = compare(env.root, cev["outputs"], spec.files)
    if bad:
        return "fail", bad, None
    total = sum(os.path.getsize(os.path.join(env.root, n)) for n in spec.files)
    total *= spec.parallel * max(spec.connections, 2 if spec.resume or spec.zerortt else 1)
    mbit = total * 8 / elapsed / 1e6 if case.goodput else None
    bad = case.check(casemod.Run(server_name, client_name, sev, cev, rev, iev, mbit))
    if bad:
        return "fail", bad, mbit
    return "pass", f"{elapsed:.1f} s", mbit


def versions(qs):
    v = subprocess.run([qs, "--version"], capture_output=True, text=True).stdout.strip()
    out = {"quicshard": v.removeprefix("quicshard ")}
    try:
        import aioquic
        out["aioquic"] = aioquic.__version__
    except ImportError:
        out["aioquic"] = "not installed"
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "ngtcp2-client"], capture_output=True, text=True)
    out["ngtcp2"] = r.stdout.strip() if r.returncode == 0 and peers.ngtcp2_available() else "not installed"
    return out


def blocked_pairing(qs, server, client):
    """Why a whole pairing cannot run (ngtcp2: not installed, or quicshard has no h3 yet)."""
    if "ngtcp2" not in (server, client):
        return None
    if not peers.ngtcp2_available():
        return "ngtcp2 not installed (scripts/test installs ngtcp2-client and ngtcp2-server when root)"
    if not peers.quicshard_has_h3(qs):
        return "needs h3: ngtcp2's sample client and server speak only h3, and `quicshard get` has no --alpn"
    return None


def write_markdown(path, results, names, pairings, meta):
    notes = []
    lines = [
        "# Interop matrix", "",
        f"Generated by `{meta['command']}` on {meta['date']}.", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".", "",
        "Columns are SERVER ← CLIENT. Every cell downloads files and compares them byte for byte; "
        "cases with a property to prove check it too (see the case list below and "
        "`tests/interop/cases.py`). Goodput (Mbit/s) is given where the case moves enough data "
        "to mean something.", "",
        "| case | " + " | ".join(f"{s} ← {c}" for s, c in pairings) + " |",
        "|---|" + "---|" * len(pairings),
    ]
    for name in names:
        cells = []
        for pairing in pairings:
            status, detail, mbit = results[(name, pairing)]
            if status == "pass":
                cells.append("pass" + (f" ({mbit:.1f} Mbit/s)" if mbit else ""))
            else:
                text = f"{status}: {detail}".replace("|", "/").replace("\n", " ")
                if text not in notes:
                    notes.append(text)
                cells.append(f"{status} [{notes.index(text) + 1}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Notes:", ""] + [f"{i + 1}. {n}" for i, n in enumerate(notes)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n" + meta["footer"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("qs")
    p.add_argument("--quick", action="store_true", help="10 instead of 50 short connections")
    p.add_argument("--output")
    p.add_argument("--cases")
    p.add_argument("--pairings")
    p.add_argument("--footer", help="Markdown file appended to --output")
    args = p.parse_args()
    qs = os.path.abspath(args.qs)
    all_cases = casemod.cases(args.quick)
    if args.cases:
        wanted = args.cases.split(",")
        all_cases = [c for c in all_cases if c.name in wanted]
    pairings = PAIRINGS
    if args.pairings:
        wanted = args.pairings.split(",")
        pairings = [pr for pr in PAIRINGS if f"{pr[0]}<-{pr[1]}" in wanted]
    work = tempfile.mkdtemp(prefix="qs-matrix-")
    root = os.path.join(work, "www")
    os.makedirs(root)
    make_files(root)
    cert, key = make_cert(work, "cert")
    big_cert, big_key = make_cert(work, "big", extra_names=400)
    env = peers.Env(qs, work, root, cert, key, big_cert, big_key)
    results = {}
    passed = failed = 0
    unsupported = []
    skipped = []
    for s, c in pairings:
        blocked = blocked_pairing(qs, s, c)
        for case in all_cases:
            t = time.monotonic()
            if blocked:
                res = ("unsupported", blocked, None)
            elif args.quick and case.name in casemod.QUICK_SKIPPED:
                res = ("skipped", casemod.QUICK_SKIPPED[case.name], None)
            else:
                try:
                    res = run_cell(env, case, s, c, args.quick)
                except Exception as e:  # a cell that crashed the driver is a failed cell
                    res = ("fail", f"{type(e).__name__}: {e}", None)
            results[(case.name, (s, c))] = res
            status, detail, mbit = res
            rate = f" {mbit:.1f} Mbit/s" if mbit else ""
            print(f"{status.upper():11} {case.name:20} {s}<-{c} ({time.monotonic() - t:.1f} s){rate}: {detail}",
                  flush=True)
            if status == "pass":
                passed += 1
            elif status == "fail":
                failed += 1
            elif status == "skipped":
                skipped.append(f"{case.name} {s}<-{c}: {detail}")
            else:
                unsupported.append(f"{case.name} {s}<-{c}: {detail}")
    print(f"{passed} passed, {failed} failed")
    for u in unsupported:
        print(f"unsupported: {u}")
    for u in skipped:
        print(f"skipped: {u}")
    if args.output:
        footer = open(args.footer).read() if args.footer else ""
        meta = {
            "command": " ".join(["scripts/interop"] + (["--quick"] if args.quick else [])),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "versions": versions(qs), "footer": footer,
        }
        write_markdown(args.output, results, [c.name for c in all_cases], pairings, meta)
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
