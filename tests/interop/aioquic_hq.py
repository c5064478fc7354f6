#!/usr/bin/env python3
"""An hq-interop (HTTP/0.9 over QUIC) client and server on aioquic, used as an independent peer.

  aioquic_hq.py server --listen HOST:PORT --root DIR --cert PEM --key PEM [--retry] [--log JSON]
      prints "listening on HOST:PORT" when ready; serves files under DIR; stops on SIGTERM.
      Session tickets are kept in memory, so clients can resume and send 0-RTT.
  aioquic_hq.py client --output DIR [--connections N] [--parallel P] [--resume] [--zero-rtt]
                       [--key-update] [--chacha20] [--log JSON] URL...
      downloads every URL over one connection (parallel streams); --connections repeats that
      over N connections one after another, --parallel runs P clients at once (connection j's
      files are saved as NAME.j, the first one's as NAME); --resume gives
      every connection after the first the previous one's session ticket (--zero-rtt: and sends
      its requests in 0-RTT); --key-update updates the keys after the first file of each
      connection; --chacha20 offers only TLS_CHACHA20_POLY1305_SHA256. Exit 0 iff all arrived.
  aioquic_hq.py echo --connect HOST:PORT --streams N --size BYTES
      ALPN "echo": sends N streams of random bytes; exit 0 iff each comes back identical.

--log writes what the TLS stack and the qlog saw (for the interop matrix to check):
  {"connections": [{"cipher": ..., "resumed": ..., "early_data": ...}, ...],
   "key_updates": {"local_update": N, "remote_update": N}, "packets_received": {TYPE: N}}
"""
import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
from urllib.parse import urlparse

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.h0.connection import H0_ALPN, H0Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, StreamDataReceived, StreamReset
from aioquic.quic.logger import QuicLogger
from aioquic.tls import CipherSuite

HANDSHAKES = []  # one record per completed handshake, both roles


def record_handshake(quic, event):
    HANDSHAKES.append({
        "cipher": quic.tls.key_schedule.cipher_suite.name,
        "resumed": event.session_resumed,
        "early_data": event.early_data_accepted,
    })


def write_log(path, logger):
    """Writes the --log summary: handshakes plus key updates and packet types from the qlog."""
    if not path:
        return
    updates = {"local_update": 0, "remote_update": 0}
    packets = {}
    for trace in logger.to_dict()["traces"] if logger else []:
        for ev in trace["events"]:
            name, data = ev.get("name", ""), ev.get("data", {})
            if name.endswith("key_updated") and data.get("trigger") in updates:
                updates[data["trigger"]] += 1
            elif name.endswith("packet_received"):
                kind = data.get("header", {}).get("packet_type", "?")
                packets[kind] = packets.get(kind, 0) + 1
    with open(path, "w") as f:
        json.dump({"connections": HANDSHAKES, "key_updates": updates, "packets_received": packets}, f)


class HqServer(QuicConnectionProtocol):
    root = "/nonexistent"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._h0 = H0Connection(self._quic)

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            record_handshake(self._quic, event)
        for ev in self._h0.handle_event(event):
            if isinstance(ev, HeadersReceived):
                path = dict(ev.headers).get(b":path", b"/").decode()
                full = os.path.realpath(os.path.join(self.root, path.lstrip("/")))
                if not full.startswith(self.root + os.sep) or not os.path.isfile(full):
                    self._quic.reset_stream(ev.stream_id, 0x194)
                    continue
                with open(full, "rb") as f:
                    data = f.read()
                self._h0.send_headers(ev.stream_id, [(b":status", b"200")])
                self._h0.send_data(ev.stream_id, data, end_stream=True)
        self.transmit()


class HqClient(QuicConnectionProtocol):
    key_update = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._h0 = H0Connection(self._quic)
        self._waiters = {}
        self._bodies = {}
        self._updated = not self.key_update

    async def get(self, authority, path):
        stream_id = self._quic.get_next_available_stream_id()
        self._bodies[stream_id] = bytearray()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[stream_id] = waiter
        self._h0.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode()), (b":path", path.encode())],
            end_stream=True,
        )
        self.transmit()
        return await waiter

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            record_handshake(self._quic, event)
        if isinstance(event, StreamReset) and event.stream_id in self._waiters:
            self._waiters.pop(event.stream_id).set_exception(RuntimeError(f"stream {event.stream_id} reset ({event.error_code})"))
            return
        for ev in self._h0.handle_event(event):
            if isinstance(ev, DataReceived) and ev.stream_id in self._bodies:
                self._bodies[ev.stream_id] += ev.data
                if ev.stream_ended:
                    self._waiters.pop(ev.stream_id).set_result(bytes(self._bodies.pop(ev.stream_id)))
                    if not self._updated:
                        self._updated = True
                        self._quic.request_key_update()
                        self.transmit()


class EchoClient(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._waiters = {}
        self._bodies = {}

    async def echo(self, payload):
        stream_id = self._quic.get_next_available_stream_id()
        self._bodies[stream_id] = bytearray()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[stream_id] = waiter
        self._quic.send_stream_data(stream_id, payload, end_stream=True)
        self.transmit()
        return await waiter

    def quic_event_received(self, event):
        if isinstance(event, StreamReset) and event.stream_id in self._waiters:
            self._waiters.pop(event.stream_id).set_exception(RuntimeError(f"stream {event.stream_id} reset"))
        elif isinstance(event, StreamDataReceived) and event.stream_id in self._bodies:
            self._bodies[event.stream_id] += event.data
            if event.end_stream:
                self._waiters.pop(event.stream_id).set_result(bytes(self._bodies.pop(event.stream_id)))


async def run_echo(args):
    host, port = args.connect.rsplit(":", 1)
    config = QuicConfiguration(is_client=True, alpn_protocols=["echo"], verify_mode=ssl.CERT_NONE)
    payloads = [os.urandom(args.size) for _ in range(args.streams)]
    async with connect(host.strip("[]"), int(port), configuration=config, create_protocol=EchoClient) as client:
        got = await asyncio.wait_for(asyncio.gather(*(client.echo(p) for p in payloads)), timeout=args.timeout)
    bad = [i for i, (a, b) in enumerate(zip(payloads, got)) if a != b]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(payloads)} streams came back different (first: {bad[0]}, {len(got[bad[0]])} bytes)")


async def run_server(args):
    host, port = args.listen.rsplit(":", 1)
    logger = QuicLogger() if args.log else None
    config = QuicConfiguration(is_client=False, alpn_protocols=H0_ALPN, quic_logger=logger)
    config.load_cert_chain(args.cert, args.key)
    HqServer.root = os.path.realpath(args.root)
    tickets = {}
    server = await serve(host.strip("[]"), int(port), configuration=config, create_protocol=HqServer, retry=args.retry,
                         session_ticket_fetcher=tickets.pop,
                         session_ticket_handler=lambda t: tickets.__setitem__(t.ticket, t))
    sock = server._transport.get_extra_info("sockname")
    print(f"listening on {sock[0]}:{sock[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    write_log(args.log, logger)


async def client_connection(args, config, urls, ticket_box):
    """One connection downloading every URL; returns the bodies."""
    host, port = urls[0].hostname, urls[0].port or 443
    early = args.zero_rtt and ticket_box.get("ticket") is not None
    if args.resume or args.zero_rtt:
        config.session_ticket = ticket_box.get("ticket")
    async with connect(host, port, configuration=config, create_protocol=HqClient,
                       session_ticket_handler=lambda t: ticket_box.__setitem__("ticket", t),
                       wait_connected=not early) as client:
        return await asyncio.wait_for(
            asyncio.gather(*(client.get(urls[0].netloc, u.path) for u in urls)), timeout=args.timeout
        )


async def client_sequence(args, logger, urls):
    """--connections connections one after another (sharing a ticket box for --resume)."""
    ticket_box = {}
    bodies = []
    count = max(args.connections, 2 if args.resume or args.zero_rtt else 1)
    for _ in range(count):
        config = QuicConfiguration(is_client=True, alpn_protocols=H0_ALPN, verify_mode=ssl.CERT_NONE,
                                   quic_logger=logger)
        if args.chacha20:
            config.cipher_suites = [CipherSuite.CHACHA20_POLY1305_SHA256]
        bodies.append(await client_connection(args, config, urls, ticket_box))
        # aioquic's connect() closes on exit; give the ticket a moment if it came late
        if (args.resume or args.zero_rtt) and "ticket" not in ticket_box:
            raise RuntimeError("no session ticket received")
    return bodies


async def run_client(args):
    urls = [urlparse(u) for u in args.urls]
    HqClient.key_update = args.key_update
    logger = QuicLogger() if args.log else None
    results = await asyncio.gather(*(client_sequence(args, logger, urls) for _ in range(args.parallel)))
    write_log(args.log, logger)
    os.makedirs(args.output, exist_ok=True)
    # connection j's files get the suffix ".j" (none for the first)
    for i, bodies in enumerate(b for per_client in results for b in per_client):
        for u, body in zip(urls, bodies):
            name = os.path.basename(u.path) + (f".{i}" if i else "")
            with open(os.path.join(args.output, name), "wb") as f:
                f.write(body)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--listen", required=True)
    s.add_argument("--root", required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--retry", action="store_true")
    s.add_argument("--log")
    c = sub.add_parser("client")
    c.add_argument("--output", required=True)
    c.add_argument("--timeout", type=float, default=60)
    c.add_argument("--connections", type=int, default=1)
    c.add_argument("--parallel", type=int, default=1)
    c.add_argument("--resume", action="store_true")
    c.add_argument("--zero-rtt", action="store_true")
    c.add_argument("--key-update", action="store_true")
    c.add_argument("--chacha20", action="store_true")
    c.add_argument("--log")
    c.add_argument("urls", nargs="+")
    e = sub.add_parser("echo")
    e.add_argument("--connect", required=True)
    e.add_argument("--streams", type=int, default=8)
    e.add_argument("--size", type=int, default=100000)
    e.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    runners = {"server": run_server, "client": run_client, "echo": run_echo}
    try:
        asyncio.run(runners[args.role](args))
    except Exception as e:  # one line, non-zero exit
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
