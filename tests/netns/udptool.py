#!/usr/bin/env python3
"""Small UDP helpers for the netns suites (run_lb.sh, run_nft.sh; standard library only; every
mode is bounded).

relay  A UDP relay between one local client (e.g. `quicshard get` sending to 127.0.0.1:PORT)
       and an upstream server. Upstream traffic leaves from socket A (bound to --bind1); after
       --switch-after datagrams from the server it leaves from socket B (bound to --bind2, a new
       address and port): to the server the client has moved mid-transfer. Replies are read on
       both sockets. --max-pps paces server->client datagrams so a download lasts long enough
       to overlap other events (excess waits in the kernel socket buffer; QUIC recovers what
       overflows). Exits after --limit seconds or when idle for --idle seconds, printing one line
       `relay: up_a=N up_b=N down_a=N down_b=N switched=0|1`. With --cid-len N the line also
       tells the DCIDs (the N octets after the first) of the client's short-header datagrams:
       `dcids_a=N dcids_b=N b_uses_first=0|1`, distinct ones sent from each socket and whether
       socket B sent the first one socket A sent.
flood  Sends --count garbage datagrams to --to, --rate per second, in five equal classes that
       a QUIC-LB load balancer must reject or cannot route: empty, long header with a 21+ byte
       DCID, version negotiation, truncated long header, and short headers with DCIDs of the
       reserved config codepoint 0b111 (random bytes). Prints `flood: sent=N class_counts=...`.
sniff  Captures (AF_PACKET) short-header UDP datagrams to --port arriving on --iface and prints
       the hex of the first --cid-len bytes after the first byte (the DCID), each distinct one
       once, up to --count, for at most --limit seconds.
"""

import argparse
import os
import random
import select
import socket
import struct
import sys
import time


def relay(a):
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli.bind(("127.0.0.1", a.listen_port))
    up_host, up_port = a.upstream.rsplit(":", 1)
    upstream = (up_host, int(up_port))
    ups = []
    for b in (a.bind1, a.bind2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        s.bind((b, 0))
        ups.append(s)
    print(f"relay ready on 127.0.0.1:{cli.getsockname()[1]} via {ups[0].getsockname()} then {ups[1].getsockname()}", flush=True)
    client = None
    cur = 0
    counts = {"up_a": 0, "up_b": 0, "down_a": 0, "down_b": 0}
    dcids = (set(), set())
    first_a = None
    down_total = 0
    start = time.monotonic()
    last = start
    interval = 1.0 / a.max_pps if a.max_pps > 0 else 0.0
    next_down = start
    while True:
        now = time.monotonic()
        if now - start > a.limit or (client is not None and now - last > a.idle):
            break
        # pacing: only read server sockets when the next slot is due
        rd = [cli]
        wait = 0.2
        if now >= next_down:
            rd += ups
        else:
            wait = min(wait, next_down - now)
        r, _, _ = select.select(rd, [], [], wait)
        for s in r:
            data, frm = s.recvfrom(65535)
            last = time.monotonic()
            if s is cli:
                client = frm
                if a.cid_len and len(data) > a.cid_len and data[0] & 0x80 == 0:
                    dcid = data[1:1 + a.cid_len]
                    dcids[cur].add(dcid)
                    if cur == 0 and first_a is None:
                        first_a = dcid
                ups[cur].sendto(data, upstream)
                counts["up_a" if cur == 0 else "up_b"] += 1
            else:
                if client is not None:
                    cli.sendto(data, client)
                counts["down_a" if s is ups[0] else "down_b"] += 1
                down_total += 1
                if interval:
                    next_down = max(next_down + interval, last - 0.05)
                if cur == 0 and a.switch_after and down_total >= a.switch_after:
                    cur = 1
    line = "relay: " + " ".join(f"{k}={v}" for k, v in counts.items()) + f" switched={cur}"
    if a.cid_len:
        line += f" dcids_a={len(dcids[0])} dcids_b={len(dcids[1])} b_uses_first={int(first_a in dcids[1])}"
    print(line, flush=True)


def flood(a):
    rnd = random.Random(a.seed)
    host, port = a.to.rsplit(":", 1)
    to = (host, int(port))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    classes = [0] * 5
    per_tick = max(1, a.rate // 100)
    t = time.monotonic()
    for i in range(a.count):
        k = i % 5
        if k == 0:
            d = b""
        elif k == 1:  # QUIC v1 long header whose DCID length is 21..255: CID too long
            n = rnd.randint(21, 255)
            d = bytes([0xC0]) + struct.pack("!I", 1) + bytes([n]) + os.urandom(min(n, 40))
        elif k == 2:  # version negotiation (version 0): clients never send one
            d = bytes([0x80]) + b"\0\0\0\0" + bytes([8]) + os.urandom(8) + bytes([8]) + os.urandom(8)
        elif k == 3:  # long header cut short
            d = bytes([0xC0]) + os.urandom(rnd.randint(0, 3))
        else:  # short header, DCID of config codepoint 0b111 (never routable): random payload
            d = bytes([0x40 | rnd.randint(0, 0x3F), 0xE0 | rnd.randint(0, 0x1F)]) + os.urandom(rnd.randint(20, 1200))
        try:
            s.sendto(d, to)
            classes[k] += 1
        except OSError:
            pass
        if (i + 1) % per_tick == 0:
            t += 0.01
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    print(f"flood: sent={sum(classes)} empty={classes[0]} cid_too_long={classes[1]} "
          f"version_negotiation={classes[2]} too_short={classes[3]} reserved_cid={classes[4]}", flush=True)


def sniff(a):
    ETH_P_ALL = 0x0003
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((a.iface, 0))
    print("sniff ready", flush=True)
    seen = []
    deadline = time.monotonic() + a.limit
    while len(seen) < a.count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([s], [], [], left)
        if not r:
            break
        pkt, _addr = s.recvfrom(65535)
        if len(pkt) < 14 + 20 + 8 or pkt[12:14] != b"\x08\x00":
            continue
        ip = pkt[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        udp = ip[ihl:]
        if len(udp) < 8 or struct.unpack("!H", udp[2:4])[0] != a.port:
            continue
        payload = udp[8:]
        if len(payload) < 1 + a.cid_len or payload[0] & 0x80:
            continue
        cid = payload[1:1 + a.cid_len].hex()
        if cid not in seen:
            seen.append(cid)
            print(cid, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("relay")
    r.add_argument("--listen-port", type=int, required=True)
    r.add_argument("--upstream", required=True)
    r.add_argument("--bind1", required=True)
    r.add_argument("--bind2", required=True)
    r.add_argument("--switch-after", type=int, default=0)
    r.add_argument("--max-pps", type=int, default=0)
    r.add_argument("--cid-len", type=int, default=0)
    r.add_argument("--limit", type=float, default=60)
    r.add_argument("--idle", type=float, default=5)
    f = sub.add_parser("flood")
    f.add_argument("--to", required=True)
    f.add_argument("--count", type=int, default=50000)
    f.add_argument("--rate", type=int, default=25000)
    f.add_argument("--seed", type=int, default=1)
    s = sub.add_parser("sniff")
    s.add_argument("--iface", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--cid-len", type=int, required=True)
    s.add_argument("--count", type=int, default=5)
    s.add_argument("--limit", type=float, default=30)
    a = p.parse_args()
    {"relay": relay, "flood": flood, "sniff": sniff}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
