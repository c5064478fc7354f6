#!/usr/bin/env python3
"""An HTTP/3 client and server on aioquic (aioquic.h3), used as an independent h3 peer.

  aioquic_h3.py server --listen HOST:PORT --root DIR --cert PEM --key PEM
      prints "listening on HOST:PORT" when ready; GET/HEAD of files under DIR (200 with
      content-length, 404 otherwise); stops on SIGTERM.
  aioquic_h3.py client --output DIR [--method GET|HEAD] [--expect-status N] URL...
      requests every URL over one connection, all at once; GET bodies are saved as DIR/NAME.
      Checks each response: the status (default 200) and, for 200, that content-length equals
      the body length (HEAD: that the body is empty). Prints `STATUS CONTENT-LENGTH URL` per
      response; exit 0 iff every check passed.
"""
import argparse
import asyncio
import os
import signal
import ssl
import sys
from urllib.parse import urlparse

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamReset


class H3Server(QuicConnectionProtocol):
    root = "/nonexistent"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._h3 = H3Connection(self._quic)

    def quic_event_received(self, event):
        for ev in self._h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                self.respond(ev.stream_id, dict(ev.headers))
        self.transmit()

    def respond(self, stream_id, headers):
        method = headers.get(b":method", b"")
        path = headers.get(b":path", b"/").decode().split("?")[0]
        full = os.path.realpath(os.path.join(self.root, path.lstrip("/")))
        if method not in (b"GET", b"HEAD"):
            self._h3.send_headers(stream_id, [(b":status", b"405"), (b"content-length", b"0")], end_stream=True)
            return
        if not full.startswith(self.root + os.sep) or not os.path.isfile(full):
            body = b"not found\n"
            self._h3.send_headers(stream_id, [(b":status", b"404"), (b"content-length", str(len(body)).encode())])
            self._h3.send_data(stream_id, body if method == b"GET" else b"", end_stream=True)
            return
        with open(full, "rb") as f:
            data = f.read()
        self._h3.send_headers(stream_id, [
            (b":status", b"200"),
            (b"content-length", str(len(data)).encode()),
            (b"content-type", b"application/octet-stream"),
        ])
        self._h3.send_data(stream_id, data if method == b"GET" else b"", end_stream=True)


# aioquic 1.7.2 checks content-length against the body of every response, also of HEAD requests
# (RFC 9110 §9.3.2: a HEAD response carries the GET's content-length and no content); skip the
# check for the streams of HEAD requests.
HEAD_STREAMS = set()
_check_content_length = H3Connection._check_content_length
H3Connection._check_content_length = lambda self, stream: (
    None if stream.stream_id in HEAD_STREAMS else _check_content_length(self, stream))


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._h3 = H3Connection(self._quic)
        self._waiters = {}
        self._responses = {}

    async def request(self, method, url):
        stream_id = self._quic.get_next_available_stream_id()
        self._responses[stream_id] = {"headers": {}, "body": bytearray()}
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[stream_id] = waiter
        if method == "HEAD":
            HEAD_STREAMS.add(stream_id)
        self._h3.send_headers(stream_id, [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", url.netloc.encode()),
            (b":path", (url.path or "/").encode()),
        ], end_stream=True)
        self.transmit()
        return await waiter

    def quic_event_received(self, event):
        if isinstance(event, StreamReset) and event.stream_id in self._waiters:
            self._waiters.pop(event.stream_id).set_exception(RuntimeError(f"stream {event.stream_id} reset ({event.error_code})"))
            return
        for ev in self._h3.handle_event(event):
            r = self._responses.get(getattr(ev, "stream_id", None))
            if r is None:
                continue
            if isinstance(ev, HeadersReceived):
                r["headers"].update(dict(ev.headers))
            elif isinstance(ev, DataReceived):
                r["body"] += ev.data
            if getattr(ev, "stream_ended", False):
                self._waiters.pop(ev.stream_id).set_result(self._responses.pop(ev.stream_id))


async def run_server(args):
    host, port = args.listen.rsplit(":", 1)
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(args.cert, args.key)
    H3Server.root = os.path.realpath(args.root)
    server = await serve(host.strip("[]"), int(port), configuration=config, create_protocol=H3Server)
    sock = server._transport.get_extra_info("sockname")
    print(f"listening on {sock[0]}:{sock[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def check(method, url, resp, expect):
    """None if the response passes, else why not."""
    status = int(resp["headers"].get(b":status", b"0"))
    if status != expect:
        return f"{url.path}: status {status}, want {expect}"
    body = resp["body"]
    if status == 200:
        length = resp["headers"].get(b"content-length")
        if method == "HEAD":
            if body:
                return f"{url.path}: HEAD response has a {len(body)}-byte body"
        elif length is None or int(length) != len(body):
            return f"{url.path}: content-length {length} but {len(body)} body bytes"
    return None


async def run_client(args):
    urls = [urlparse(u) for u in args.urls]
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE)
    async with connect(urls[0].hostname, urls[0].port or 443, configuration=config, create_protocol=H3Client) as client:
        resps = await asyncio.wait_for(asyncio.gather(*(client.request(args.method, u) for u in urls)), timeout=args.timeout)
    errors = []
    os.makedirs(args.output, exist_ok=True)
    for u, r in zip(urls, resps):
        status = int(r["headers"].get(b":status", b"0"))
        print(f"{status} {r['headers'].get(b'content-length', b'-').decode()} {u.geturl()}")
        err = check(args.method, u, r, args.expect_status)
        if err:
            errors.append(err)
        elif args.method == "GET" and args.expect_status == 200:
            with open(os.path.join(args.output, os.path.basename(u.path) or "index.html"), "wb") as f:
                f.write(r["body"])
    if errors:
        raise RuntimeError("; ".join(errors[:3]))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--listen", required=True)
    s.add_argument("--root", required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    c = sub.add_parser("client")
    c.add_argument("--output", required=True)
    c.add_argument("--method", default="GET", choices=["GET", "HEAD"])
    c.add_argument("--expect-status", type=int, default=200)
    c.add_argument("--timeout", type=float, default=60)
    c.add_argument("urls", nargs="+")
    args = p.parse_args()
    try:
        asyncio.run(run_server(args) if args.cmd == "server" else run_client(args))
    except Exception as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
