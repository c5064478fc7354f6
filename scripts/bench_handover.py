"""The handover scenario of scripts/bench (`--only handover`): what a takeover costs.

Each run serves `quicshard serve --shards 2 --handover PATH` and drives it for DURATION seconds
with two loads at once: request/response at a fixed rate (`quicshard bench --rate`, latency
from each request's due time, so a stall shows) and new connections in a closed loop from
quinn's own client API (`quinn-loadgen --mode handshake --resume`: every handshake after each
loop's first resumes a ticket, across the takeover too). A run either takes over at a third of
the load (a second `quicshard serve --handover PATH` starts) or does not (the baseline, same
loads); the two are interleaved run by run. Measured: the load generators' failures and latency,
how long the successor took from its start to `listening on` (switch), the successor's own
takeover time (connect to steering switch, `takeover_ms` in its stats), and how long the old
process took to drain and exit.
"""

import json
import os
import statistics
import subprocess
import tempfile
import time

RATE = 5000
CONNECTIONS = 4


def _serve(bins, sock, stats):
    cmd = [bins["quicshard-server"], "serve", "--listen", "127.0.0.1:0", "--shards", "2",
           "--handover", sock, "--stats-file", stats, "--drain-timeout", "30"]
    t = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"serve did not start: {line!r}")
    return proc, int(line.strip().rsplit(":", 1)[1]), time.monotonic() - t


def _loads(bins, port, duration):
    rr = subprocess.Popen(
        [bins["quicshard"], "bench", "--connect", f"127.0.0.1:{port}", "--insecure", "--json",
         "--mode", "rr", "--connections", str(CONNECTIONS), "--rate", str(RATE),
         "--duration", str(duration)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    hs = subprocess.Popen(
        [bins["quinn-loadgen"], "--connect", f"127.0.0.1:{port}", "--mode", "handshake",
         "--resume", "--connections", "2", "--duration", str(duration), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return rr, hs


def _report(proc, timeout):
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out) if out.strip() else {"failed": -1}


def _one(bins, work, duration, takeover):
    d = tempfile.mkdtemp(dir=work)
    sock = os.path.join(d, "h.sock")
    a, port, _ = _serve(bins, sock, os.path.join(d, "a.json"))
    rr, hs = _loads(bins, port, duration)
    m = {}
    b = None
    try:
        time.sleep(duration / 3)
        if takeover:
            b, port_b, m["switch_ms"] = _serve(bins, sock, os.path.join(d, "b.json"))
            m["switch_ms"] *= 1e3
            assert port_b == port
            t = time.monotonic()
            a.wait(timeout=120)
            m["drain_s"] = time.monotonic() - t
            m["old_exit"] = a.returncode
        r, h = _report(rr, duration + 60), _report(hs, duration + 60)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
    lat = r.get("latency_ms", {})
    m.update(rr_failed=r.get("failed", -1) + r.get("connection_errors", 0)
             + (r.get("open_loop") or {}).get("late", 0)
             + (r.get("open_loop") or {}).get("not_issued", 0),
             p50_ms=lat.get("p50"), p99_ms=lat.get("p99"), p999_ms=lat.get("p999"),
             max_ms=lat.get("max"),
             hs_failed=h.get("failed", -1) + h.get("connection_errors", 0),
             hs_per_s=h.get("handshakes_per_s") or h.get("requests_per_s"))
    if takeover:
        with open(os.path.join(d, "b.json")) as f:
            hb = json.load(f)["handover"]
        m["takeover_ms"] = hb["takeover_ms"]
        m["forwarded"] = hb["forwarded_in"]
    return m


def run(bins, runs, quick, work):
    """Runs the scenario; returns its markdown section."""
    duration = 3 if quick else 6
    res = {"no takeover": [], "takeover": []}
    for i in range(runs):
        for label, takeover in (("no takeover", False), ("takeover", True)):
            m = _one(bins, work, duration, takeover)
            res[label].append(m)
            print(f"[{i + 1}/{runs}] handover / {label}: {m}", flush=True)

    def med(label, k):
        v = [x[k] for x in res[label] if x.get(k) is not None]
        return statistics.median(v) if v else None

    def fmt(v, f="{:.3f}"):
        return "n/a" if v is None else f.format(v)

    lines = ["### handover", "",
             f"load: rr at {RATE} requests/s over {CONNECTIONS} connections (quicshard bench, "
             f"open loop) + handshakes in 2 closed loops (quinn-loadgen --resume), {duration} s; "
             "the takeover at a third of it", "",
             "| configuration | p99 ms | p99.9 ms | max ms | p50 ms | failed requests | "
             "failed handshakes | handshakes/s | switch ms | takeover ms | old drained s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = med("no takeover", "p99_ms")
    for label in res:
        p99 = med(label, "p99_ms")
        ratio = f" ({p99 / base:.2f}x)" if p99 and base and label == "takeover" else ""
        failed = sum(max(x["rr_failed"], 0) for x in res[label])
        hfailed = sum(max(x["hs_failed"], 0) for x in res[label])
        lines.append(
            f"| {label} | {fmt(p99)}{ratio} | {fmt(med(label, 'p999_ms'))} | "
            f"{fmt(med(label, 'max_ms'))} | {fmt(med(label, 'p50_ms'))} | {failed} | {hfailed} | "
            f"{fmt(med(label, 'hs_per_s'), '{:.0f}')} | {fmt(med(label, 'switch_ms'), '{:.1f}')} | "
            f"{fmt(med(label, 'takeover_ms'), '{:.1f}')} | {fmt(med(label, 'drain_s'), '{:.2f}')} |")
    lines.append("")
    return "\n".join(lines) + "\n", res
