"""The cases of the interop matrix (named as in the QUIC interop runner) and the evidence each one
checks besides the downloaded bytes.

A case is a `Case`: the `Spec` it asks of the peers, the network between them (`impair`: flags of
`quicshard impair`; `relay`: a `netsim.Relay`), a `check(run)` that returns None or why the cell
failed, and `unsupported(server, client)` that returns None or why the pairing cannot run it.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

from peers import Spec

SMALL, MEDIUM, LARGE = "small.txt", "medium.bin", "large.bin"
MANY = [f"many/{i:04}.txt" for i in range(1000)]
MULTI_FILE = "m100k.bin"

NO_KEY_PHASE = ("neither side can show a key update happened: quinn-proto exposes no key-phase counter "
                "and the engine counts none (the aioquic pairings check it in aioquic's qlog)")
H3_CLIENT_HQ_ONLY = ("quicshard get implements --resume, --zero-rtt and --key-update on its hq-interop "
                     "path only, and ngtcp2's server speaks only h3")
NGTCP2_KEY_UPDATE = ("unverifiable with ngtcp2 0.12: its qlog records no key phase or key update; its "
                     "sample client also aborts (ngtcp2_conn_initiate_key_update: ERR_INVALID_STATE, "
                     "file cut short, exit 0) when its --key-update timer fires inside the 3 PTOs after "
                     "the key update quinn-proto starts on its own after 10-1000 packets")
SERVER_ONLY = ("a quicshard server case (its shards); with another server there are no quicshard "
               "shards to test")


@dataclass
class Run:
    """What a cell produced: peer names and evidence."""
    server: str
    client: str
    sev: dict
    cev: dict
    relay: Optional[dict] = None
    impair: Optional[dict] = None
    mbit: Optional[float] = None


@dataclass
class Case:
    name: str
    spec: Callable[[bool], Spec]
    check: Callable[[Run], Optional[str]] = lambda run: None
    impair: list = field(default_factory=list)
    relay: Optional[dict] = None
    unsupported: Callable[[str, str], Optional[str]] = lambda s, c: None
    goodput: bool = False


def aioquic_logs(run):
    """The aioquic logs of the cell (server first), those that exist."""
    logs = []
    if run.server == "aioquic":
        logs.append(("server", run.sev.get("log") or {}))
    if run.client == "aioquic":
        logs.append(("client", run.cev.get("log") or {}))
    return logs


def qs_total(run, key):
    return run.sev["total"].get(key, 0) if run.server == "quicshard" else None


def check_handshake(run):
    n = qs_total(run, "handshakes")
    if n is not None and n < 1:
        return "server counted no handshake"
    for side, log in aioquic_logs(run):
        if not log.get("connections"):
            return f"aioquic {side} logged no handshake"
    return None


def check_retry(run):
    if run.relay["down"].get("retry", 0) < 1:
        return f"no Retry packet on the wire (server sent {run.relay['down']})"
    n = qs_total(run, "retry_sent")
    if n is not None and n < 1:
        return "server counted no Retry"
    return None


def second_handshake(run, key):
    """Why the aioquic log(s) do not show `key` on the last of two handshakes, or None.

    An aioquic server writes its log when it is stopped, which can be before it has processed
    the last client flight (quicshard get exits, and the cell stops the server, as soon as its
    files are in): then its log may miss the second handshake. quicshard get checks the same
    property on its own side (exit 1 otherwise), so a server log that is merely short is not a
    failure; a log that has the handshake and says no is.
    """
    for side, log in aioquic_logs(run):
        conns = log.get("connections", [])
        if side == "server" and run.client == "quicshard" and len(conns) < 2:
            continue
        if len(conns) < 2 or not conns[-1][key]:
            return f"aioquic {side}: last handshake without {key} ({conns})"
    return None


def check_resumed(run):
    n = qs_total(run, "resumptions")
    if n is not None and n < 1:
        return "server decrypted no session ticket"
    # quicshard get checks itself: a second handshake without a certificate, else exit 1
    return second_handshake(run, "resumed")


def check_zerortt(run):
    n = qs_total(run, "zero_rtt_accepted")
    if n is not None and n < 1:
        return "server accepted no 0-RTT offer (zero_rtt_accepted = 0)"
    # quicshard get exits 1 unless its 0-RTT was sent and accepted
    return second_handshake(run, "early_data")


def check_chacha(run):
    for side, log in aioquic_logs(run):
        suites = {c["cipher"] for c in log.get("connections", [])}
        if suites != {"CHACHA20_POLY1305_SHA256"}:
            return f"aioquic {side} negotiated {suites or 'nothing'}"
    # with quicshard/ngtcp2 clients only ChaCha20 was offered, and their TLS stacks reject a
    # server choosing a suite they did not offer
    return None


def check_keyupdate(run):
    for side, log in aioquic_logs(run):
        updates = log.get("key_updates", {})
        wanted = "local_update" if side == "client" else "remote_update"
        if updates.get(wanted, 0) < 1:
            return f"aioquic {side} saw no {wanted} ({updates})"
    return None  # quicshard get exits 1 unless it initiated a key update


def check_impaired(*counters):
    """The impairment proxy really applied `counters` (e.g. dropped_loss) in some direction."""
    def check(run):
        for c in counters:
            if run.impair is None:
                return "no impairment counters"
            if not any(run.impair.get(d, {}).get(c, 0) > 0 for d in ("up", "down")):
                return f"proxy never applied {c} ({run.impair})"
        return None
    return check


def check_rate_limited(run):
    """The goodput cannot beat the 10 Mbit/s limit if the limiter was in the path."""
    if run.mbit is None or run.mbit > 10.5:
        return f"{run.mbit} Mbit/s through a 10 Mbit/s link: the limiter was not in the path"
    return None


def check_amplification(run):
    r = run.relay
    if not r["validated"]:
        return "the server never received a Handshake packet"
    if r["amplification"] is None or r["amplification"] > 3.0:
        return f"server sent {r['amplification']:.2f}x the bytes it received before validation"
    return None


def check_rebind(run):
    if run.relay["rebinds"] < 1:
        return "the relay never rebound"
    return None


def check_multishard(run):
    shards = run.sev["shards"]
    accepted = [s["connections_accepted"] for s in shards]
    if sum(accepted) < 100:
        return f"server accepted {sum(accepted)} connections, expected 100"
    if len(shards) != 4 or min(accepted) < 1:
        return f"connections per shard {accepted}: a shard accepted none"
    if run.relay["rebinds"] < run.relay["clients"]:
        return f"{run.relay['rebinds']} rebinds for {run.relay['clients']} clients"
    return None


def only_qs_server(s, c):
    return None if s == "quicshard" else SERVER_ONLY


def unsupported_zerortt(s, c):
    return H3_CLIENT_HQ_ONLY if (s, c) == ("ngtcp2", "quicshard") else None


def unsupported_keyupdate(s, c):
    if (s, c) == ("quicshard", "quicshard"):
        return NO_KEY_PHASE
    if c == "ngtcp2":
        return NGTCP2_KEY_UPDATE
    return H3_CLIENT_HQ_ONLY if (s, c) == ("ngtcp2", "quicshard") else None


# Not in the quick run (scripts/test): under 30% loss or corruption about one connection in 200
# stalls past a client's 30 s limit while its probe timeouts back off (1 s, 2 s, 4 s, ...), so a
# CI-sized run of 10 connections per cell fails now and then whoever is right. The full matrix
# (scripts/interop, docs/INTEROP.md) runs them with 50 connections.
QUICK_SKIPPED = {
    name: "not in the quick run: ~1 connection in 200 outlives a client's 30 s limit under 30% "
          "impairment (probe timeout backoff); the full matrix in docs/INTEROP.md runs it"
    for name in ("handshakeloss", "handshakecorruption")
}


def cases(quick):
    short_conns = 10 if quick else 50
    return [
        Case("handshake", lambda q: Spec([SMALL]), check_handshake),
        Case("transfer", lambda q: Spec([SMALL, MEDIUM, LARGE]), goodput=True),
        Case("multiplexing", lambda q: Spec(MANY, server_args=["--max-streams", "50"]),
             check_handshake),
        Case("retry", lambda q: Spec([SMALL, MEDIUM], retry=True), check_retry, relay={}),
        Case("resumption", lambda q: Spec([SMALL, MEDIUM], resume=True), check_resumed,
             unsupported=lambda s, c: H3_CLIENT_HQ_ONLY if (s, c) == ("ngtcp2", "quicshard") else None),
        Case("zerortt", lambda q: Spec([SMALL], zerortt=True, timeout=20, server_args=["--zero-rtt"]),
             check_zerortt,
             unsupported=unsupported_zerortt),
        Case("chacha20", lambda q: Spec([SMALL, MEDIUM], chacha=True), check_chacha),
        Case("keyupdate", lambda q: Spec([SMALL, LARGE], keyupdate=True), check_keyupdate,
             unsupported=unsupported_keyupdate),
        Case("amplificationlimit", lambda q: Spec([SMALL], big_cert=True), check_amplification,
             relay={"amplification_hold": 1.0}),
        Case("handshakeloss", lambda q: Spec([SMALL], connections=short_conns, timeout=60),
             check_impaired("dropped_loss"), impair=["--loss", "30"]),
        Case("transferloss", lambda q: Spec([SMALL, MEDIUM, LARGE], timeout=120),
             check_impaired("dropped_loss"), impair=["--loss", "2"], goodput=True),
        Case("handshakecorruption", lambda q: Spec([SMALL], connections=short_conns, timeout=60),
             check_impaired("corrupted"), impair=["--corrupt", "30"]),
        Case("transfercorruption", lambda q: Spec([SMALL, MEDIUM, LARGE], timeout=120),
             check_impaired("corrupted"), impair=["--corrupt", "2"], goodput=True),
        Case("blackhole", lambda q: Spec([LARGE], timeout=120), check_impaired("dropped_blackout"),
             impair=["--rate", "20", "--blackout", "1.5-3.5"], goodput=True),
        Case("longrtt", lambda q: Spec([SMALL, MEDIUM], timeout=120), impair=["--delay", "500"],
             goodput=True),
        Case("goodput", lambda q: Spec([LARGE], timeout=120), check_rate_limited,
             impair=["--rate", "10", "--delay", "15", "--queue", "25"], goodput=True),
        # every 100 client datagrams: a 10 MB download from a peer whose client acknowledges
        # GRO batches at once (quicshard get from ngtcp2, 0.3 s) sent fewer than 300 in one run
        Case("rebind-port", lambda q: Spec([SMALL, LARGE]), check_rebind, relay={"rebind_every": 100}),
        Case("rebind-addr", lambda q: Spec([SMALL, LARGE]), check_rebind,
             relay={"rebind_every": 100, "rebind_host": "127.0.0.2"}),
        Case("ipv6", lambda q: Spec([SMALL, MEDIUM], host="::1"), check_handshake),
        Case("multishard", lambda q: Spec([SMALL, MULTI_FILE], shards=4, parallel=25, connections=4),
             check_multishard, relay={"rebind_every": 10}, unsupported=only_qs_server),
    ]
