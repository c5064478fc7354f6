#!/usr/bin/env python3
"""An aioquic client that pushes a server past its limits, for crates/cli/tests/limits.rs.

  limits_peer.py streams --connect HOST:PORT --open N
      ALPN echo; ignores the server's stream limit and opens N bidirectional streams.
  limits_peer.py flow --connect HOST:PORT --bytes N [--offset O] [--streams K] [--uni]
      ALPN echo; ignores the server's flow-control windows and sends N bytes at offset O on each
      of K streams (--uni: unidirectional ones).
  limits_peer.py connections --connect HOST:PORT --count N
      opens N connections one after another and keeps them all open.
  limits_peer.py idle --connect HOST:PORT
      connects (asking for a 60 s idle timeout) and sends nothing.

Prints one JSON object per connection on stdout when it ends or the run finishes:
  {"connected": bool, "error_code": int|null, "frame_type": int|null, "reason": str,
   "elapsed": seconds from the start of the connection to its end (or to the report)}
and exits 0 (the caller judges the outcome).
"""
import argparse
import asyncio
import json
import ssl
import time

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated

UNLIMITED = 1 << 60


class Peer(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started = time.monotonic()
        self.ended = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated) and not self.ended.done():
            self.ended.set_result(event)

    def ignore_limits(self):
        """Behave as if the server had granted everything: what a hostile client does."""
        q = self._quic
        q._remote_max_streams_bidi = UNLIMITED
        q._remote_max_data = UNLIMITED
        q._remote_max_stream_data_bidi_remote = UNLIMITED
        q._remote_max_streams_uni = UNLIMITED
        q._remote_max_stream_data_uni = UNLIMITED

    def blast(self):
        """Send everything queued at once: no congestion window, no pacing (so the bytes beyond a
        flow-control window leave before the server's window updates could cover them)."""
        cc = self._quic._loss._cc
        cc.congestion_window = UNLIMITED
        self._quic._loss._pacer.update_rate(congestion_window=UNLIMITED, smoothed_rtt=1.0)

    def report(self, connected):
        ev = self.ended.result() if self.ended.done() else None
        print(json.dumps({
            "connected": connected,
            "error_code": ev.error_code if ev else None,
            "frame_type": ev.frame_type if ev else None,
            "reason": ev.reason_phrase if ev else "",
            "elapsed": round(time.monotonic() - self.started, 3),
        }), flush=True)


def config(alpn, receive_window=1 << 24):
    """Client config; a small `receive_window` keeps the echo server from sending back, so it
    stops reading and cannot hand out more credit."""
    c = QuicConfiguration(is_client=True, alpn_protocols=[alpn], verify_mode=ssl.CERT_NONE, idle_timeout=60.0)
    c.max_stream_data = receive_window
    c.max_data = 4 * receive_window
    return c


async def ended_within(peer, timeout):
    try:
        await asyncio.wait_for(asyncio.shield(peer.ended), timeout)
    except asyncio.TimeoutError:
        pass


async def violate(host, port, timeout, act):
    async with connect(host, port, configuration=config("echo", 4096), create_protocol=Peer) as peer:
        peer.ignore_limits()
        peer.blast()
        act(peer)
        peer.transmit()
        await ended_within(peer, timeout)
        peer.report(True)


async def run(args):
    host, port = args.connect.rsplit(":", 1)
    host, port = host.strip("[]"), int(port)
    if args.mode == "streams":
        def act(peer):
            for _ in range(args.open):
                sid = peer._quic.get_next_available_stream_id()
                peer._quic.send_stream_data(sid, b"x", end_stream=False)
        await violate(host, port, args.timeout, act)
    elif args.mode == "flow":
        def act(peer):
            for _ in range(args.streams):
                sid = peer._quic.get_next_available_stream_id(is_unidirectional=args.uni)
                # start at --offset: the gap before it keeps the server from reading (and so
                # from raising its windows), whatever the timing
                sender = peer._quic._get_or_create_stream_for_send(sid).sender
                sender._buffer_start = sender._buffer_stop = sender.highest_offset = args.offset
                peer._quic.send_stream_data(sid, bytes(args.bytes), end_stream=False)
        await violate(host, port, args.timeout, act)
    elif args.mode == "idle":
        async with connect(host, port, configuration=config("echo"), create_protocol=Peer) as peer:
            await ended_within(peer, args.timeout)
            peer.report(True)
    else:
        await hold_connections(host, port, args)


async def hold_connections(host, port, args):
    """Opens --count connections in turn, keeping the successful ones open until all are tried;
    a refused one is reported at once."""
    held = []
    try:
        for _ in range(args.count):
            ctx = connect(host, port, configuration=config("echo"), create_protocol=Peer, wait_connected=False)
            peer = await ctx.__aenter__()
            peer.transmit()  # connect() defers the first flight when not waiting
            held.append((ctx, peer))
            try:
                await asyncio.wait_for(peer.wait_connected(), args.timeout)
            except (ConnectionError, asyncio.TimeoutError):
                await ended_within(peer, 1.0)
                peer.report(False)
                continue
        for _, peer in held:
            if not peer.ended.done():
                peer.report(True)
    finally:
        for ctx, _ in held:
            await ctx.__aexit__(None, None, None)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["streams", "flow", "connections", "idle"])
    p.add_argument("--connect", required=True)
    p.add_argument("--open", type=int, default=200)
    p.add_argument("--bytes", type=int, default=1 << 20)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--uni", action="store_true", help="flow: unidirectional streams")
    p.add_argument("--offset", type=int, default=0, help="flow: first stream offset")
    p.add_argument("--timeout", type=float, default=10)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
