#!/usr/bin/env python3
"""An hq-interop (HTTP/0.9 over QUIC) client and server on aioquic, used as an independent peer.

  aioquic_hq.py server --listen HOST:PORT --root DIR --cert PEM --key PEM [--retry]
      prints "listening on HOST:PORT" when ready; serves files under DIR; stops on SIGTERM.
  aioquic_hq.py client --output DIR URL...
      downloads every URL over one connection (parallel streams); exit 0 iff all arrived whole.
  aioquic_hq.py echo --connect HOST:PORT --streams N --size BYTES
      ALPN "echo": sends N streams of random bytes; exit 0 iff each comes back identical.
"""
import argparse
import asyncio
import os
import signal
import ssl
import sys
from urllib.parse import urlparse

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.h0.connection import H0_ALPN, H0Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived, StreamReset


class HqServer(QuicConnectionProtocol):
    root = "/nonexistent"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._h0 = H0Connection(self._quic)

    def quic_event_received(self, event):
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
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._h0 = H0Connection(self._quic)
        self._waiters = {}
        self._bodies = {}

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
        if isinstance(event, StreamReset) and event.stream_id in self._waiters:
            self._waiters.pop(event.stream_id).set_exception(RuntimeError(f"stream {event.stream_id} reset ({event.error_code})"))
            return
        for ev in self._h0.handle_event(event):
            if isinstance(ev, DataReceived) and ev.stream_id in self._bodies:
                self._bodies[ev.stream_id] += ev.data
                if ev.stream_ended:
                    self._waiters.pop(ev.stream_id).set_result(bytes(self._bodies.pop(ev.stream_id)))


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
    async with connect(host, int(port), configuration=config, create_protocol=EchoClient) as client:
        got = await asyncio.wait_for(asyncio.gather(*(client.echo(p) for p in payloads)), timeout=args.timeout)
    bad = [i for i, (a, b) in enumerate(zip(payloads, got)) if a != b]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(payloads)} streams came back different (first: {bad[0]}, {len(got[bad[0]])} bytes)")


async def run_server(args):
    host, port = args.listen.rsplit(":", 1)
    config = QuicConfiguration(is_client=False, alpn_protocols=H0_ALPN)
    config.load_cert_chain(args.cert, args.key)
    HqServer.root = os.path.realpath(args.root)
    server = await serve(host.strip("[]"), int(port), configuration=config, create_protocol=HqServer, retry=args.retry)
    sock = server._transport.get_extra_info("sockname")
    print(f"listening on {sock[0]}:{sock[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


async def run_client(args):
    urls = [urlparse(u) for u in args.urls]
    host, port = urls[0].hostname, urls[0].port or 443
    config = QuicConfiguration(is_client=True, alpn_protocols=H0_ALPN, verify_mode=ssl.CERT_NONE)
    async with connect(host, port, configuration=config, create_protocol=HqClient) as client:
        bodies = await asyncio.wait_for(
            asyncio.gather(*(client.get(urls[0].netloc, u.path) for u in urls)), timeout=args.timeout
        )
    os.makedirs(args.output, exist_ok=True)
    for u, body in zip(urls, bodies):
        with open(os.path.join(args.output, os.path.basename(u.path)), "wb") as f:
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
    c = sub.add_parser("client")
    c.add_argument("--output", required=True)
    c.add_argument("--timeout", type=float, default=60)
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
