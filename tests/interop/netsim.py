"""A UDP middlebox for the interop matrix: it sees every datagram between the clients and a
server, counts the QUIC packet types it carries (long headers are walked through coalesced
packets), and can play a NAT that rebinds (new port, or new address 127.0.0.2) or hold back a
client's datagrams to test the server's anti-amplification limit.

Each client address gets its own upstream socket (a NAT mapping); a rebind swaps it for a new one,
so the server sees the client move. Replies are sent back from the listening socket, so clients
never see the server move.
"""
import selectors
import socket
import threading
import time

LONG_TYPES = {0: "initial", 1: "0rtt", 2: "handshake", 3: "retry"}
# Datagrams a relay forwards in total before it stops forwarding (a bound on runaway peers).
MAX_DATAGRAMS = 2_000_000


def read_varint(buf, i):
    """(value, next offset) of the QUIC variable-length integer at buf[i]."""
    first = buf[i]
    length = 1 << (first >> 6)
    value = first & 0x3F
    for b in buf[i + 1:i + length]:
        value = (value << 8) | b
    return value, i + length


def packet_types(datagram):
    """The QUIC packet types in one datagram, in order (coalesced long headers walked)."""
    types, i = [], 0
    while i < len(datagram):
        first = datagram[i]
        if not first & 0x80:
            types.append("1rtt")
            break
        if len(datagram) < i + 7:
            types.append("malformed")
            break
        version = int.from_bytes(datagram[i + 1:i + 5], "big")
        if version == 0:
            types.append("version_negotiation")
            break
        kind = LONG_TYPES[(first >> 4) & 3]
        types.append(kind)
        if kind == "retry":
            break
        try:
            j = i + 5
            j += 1 + datagram[j]  # DCID
            j += 1 + datagram[j]  # SCID
            if kind == "initial":
                token_len, j = read_varint(datagram, j)
                j += token_len
            length, j = read_varint(datagram, j)
        except IndexError:
            types.append("malformed")
            break
        i = j + length
    return types


class Relay:
    """Forwards datagrams between clients and `upstream` from a new port on `listen_host`.

    rebind_every: give a client a new upstream socket after every N of its datagrams (0: never).
        A rebind that falls due during the handshake waits for the client's first datagram of
        short-header packets only: QUIC needs a stable address during the handshake (RFC 9000,
        section 9), and quinn-proto drops handshake packets from a new address, so a NAT that
        rebinds earlier stalls the connection whoever the peers are.
    rebind_host: bind the new sockets to this address (rebind-addr) instead of listen_host.
    amplification_hold: after a client's first datagram, drop its others for this many seconds,
        and count bytes each way until the server has seen a Handshake packet from it.
    """

    def __init__(self, upstream, listen_host="127.0.0.1", rebind_every=0, rebind_host=None,
                 amplification_hold=0.0):
        family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
        self.upstream = upstream
        self.family = family
        self.listen_host = listen_host
        self.rebind_every = rebind_every
        self.rebind_host = rebind_host or listen_host
        self.hold = amplification_hold
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((listen_host, 0))
        self.port = self.sock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self.flows = {}  # client address -> flow dict
        self.counts = {"up": {}, "down": {}}
        self.rebinds = 0
        self.forwarded = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _new_socket(self, client, host):
        s = socket.socket(self.family, socket.SOCK_DGRAM)
        s.bind((host, 0))
        self.sel.register(s, selectors.EVENT_READ, client)
        return s

    def _flow(self, client):
        flow = self.flows.get(client)
        if flow is None:
            flow = {"sock": self._new_socket(client, self.listen_host), "old": [], "sent": 0,
                    "rebind_due": self.rebind_every,
                    "first": None, "validated": False, "client_bytes": 0, "server_bytes": 0}
            self.flows[client] = flow
        return flow

    def _count(self, direction, data):
        c = self.counts[direction]
        for t in packet_types(data):
            c[t] = c.get(t, 0) + 1

    def _up(self, data, client):
        flow = self._flow(client)
        now = time.monotonic()
        if self.hold and not flow["validated"]:
            if flow["first"] is None:
                flow["first"] = now
            elif now - flow["first"] < self.hold:
                return  # held back: the server must wait within its 3x budget
            flow["client_bytes"] += len(data)
            if "handshake" in packet_types(data):
                flow["validated"] = True
        self._count("up", data)
        flow["sock"].sendto(data, self.upstream)
        flow["sent"] += 1
        short_only = bool(data) and data[0] & 0x80 == 0
        if self.rebind_every and flow["sent"] >= flow["rebind_due"] and short_only:
            flow["rebind_due"] = flow["sent"] + self.rebind_every
            # keep the old socket open for stragglers the server still sends there
            flow["old"].append(flow["sock"])
            flow["sock"] = self._new_socket(client, self.rebind_host)
            self.rebinds += 1

    def _down(self, data, client):
        flow = self.flows[client]
        if self.hold and not flow["validated"]:
            flow["server_bytes"] += len(data)
        self._count("down", data)
        self.sock.sendto(data, client)

    def _run(self):
        while not self._stop.is_set() and self.forwarded < MAX_DATAGRAMS:
            for key, _ in self.sel.select(timeout=0.05):
                try:
                    data, src = key.fileobj.recvfrom(65536)
                except OSError:
                    continue
                self.forwarded += 1
                if key.data is None:
                    self._up(data, src)
                else:
                    self._down(data, key.data)

    def stop(self):
        """Stops forwarding; returns what was seen."""
        self._stop.set()
        self._thread.join(timeout=5)
        ratios = [f["server_bytes"] / f["client_bytes"] for f in self.flows.values() if f["client_bytes"]]
        return {
            "up": self.counts["up"], "down": self.counts["down"], "rebinds": self.rebinds,
            "clients": len(self.flows),
            "amplification": max(ratios) if ratios else None,
            "validated": all(f["validated"] for f in self.flows.values()),
        }
