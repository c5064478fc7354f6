#!/usr/bin/env bash
# quicshard servers behind a router running only nftables (root only).
#
#   tests/netns/run_nft.sh target/release/quicshard
#
# Prints `PASS name` or `FAIL name: reason` per case, then `N passed, N failed`. Not root: prints
# `NOT RUN: not root` and `0 passed, 0 failed`, exit 0; without `nft`: `NOT RUN: nft not
# installed` (scripts/test installs the Debian package `nftables` when root).
#
# Topology (addresses exist only inside these namespaces):
#
#   qnc  (client)  eth0 10.98.0.10, default route via the router
#   qnr  (router)  vc 10.98.0.1 (the service address, port 4433), br0 10.98.1.1, ip_forward=1,
#                  the ruleset of `quicshard lb --config FILE --emit-nftables` loaded with nft -f
#   qnb1..3        eth0 10.98.1.11..13, `quicshard serve --server-id 0a0N --quic-lb-config FILE`
#
# Cases: spread (100 downloads, byte-exact, over all three backends), rebind (a client whose
# port changes mid-download stays on its backend), rebind_cid (the same with a client that also
# moves to a new server CID mid-download, before the port change: `get --new-cid-after`), down
# (the download's backend is marked down and the ruleset re-emitted and reloaded mid-download:
# the download finishes, 30 new connections avoid that backend), refuse (an encrypted config is
# refused with one line). Every process has a deadline and every wait polls a condition with a
# deadline. The namespaces are deleted on exit (trap).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# Process, wait, server, download and verdict helpers (preflight, start, backend, ready, get ...).
. "$HERE/lib.sh"
preflight "$@"
if ! command -v nft >/dev/null; then
  echo "NOT RUN: nft not installed (Debian package nftables)"
  echo "0 passed, 0 failed"
  exit 0
fi
NSS=(qnc qnr qnb1 qnb2 qnb3)
CLIENT_NS=qnc
W=$(mktemp -d /tmp/qs-nft.XXXXXX)
SVC=10.98.0.1
C1=10.98.0.10
# the servers' CIDs: config octet, 2-octet server ID, 8-octet nonce (lb_config), shard byte
CID_LEN=12

setup() {
  for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null; ip netns add "$ns" || return 1; done
  nsx qnr ip link set lo up
  nsx qnr ip link add br0 type bridge || return 1
  nsx qnr ip link set br0 up
  nsx qnr ip addr add 10.98.1.1/24 dev br0
  ip -n qnr link add vc type veth peer name eth0 netns qnc || return 1
  nsx qnr ip addr add $SVC/24 dev vc
  nsx qnr ip link set vc up
  nsx qnc ip link set lo up
  nsx qnc ip link set eth0 up
  nsx qnc ip addr add $C1/24 dev eth0
  nsx qnc ip route add default via $SVC
  local i
  for i in 1 2 3; do
    ip -n qnr link add vb$i type veth peer name eth0 netns qnb$i || return 1
    nsx qnr ip link set vb$i master br0
    nsx qnr ip link set vb$i up
    nsx qnb$i ip link set lo up
    nsx qnb$i ip link set eth0 up
    nsx qnb$i ip addr add 10.98.1.1$i/24 dev eth0
    nsx qnb$i ip route add default via 10.98.1.1
  done
  nsx qnr sysctl -qw net.ipv4.ip_forward=1 || return 1
  bridge_forwarding qnr 3
}

mkdir -p "$W/www"
head -c 100000 /dev/urandom >"$W/www/f100k.bin"
head -c 12000000 /dev/urandom >"$W/www/f12m.bin"

setup_or_exit

# lb_config FILE DOWN...: plaintext QUIC-LB config id 1 and backends 0a01..0a03; the backends
# numbered in DOWN are marked down.
lb_config() {
  local f=$1 i
  shift
  {
    echo "listen = \"$SVC:4433\""
    echo "[[quic_lb]]"
    echo "id = 1"
    echo "server_id_len = 2"
    echo "nonce_len = 8"
    for i in 1 2 3; do
      echo "[[backend]]"
      echo "server_id = \"0a0$i\""
      echo "address = \"10.98.1.1$i:4433\""
      case " $* " in *" $i "*) echo "down = true" ;; esac
    done
  } >"$f"
}

# load FILE: emit the ruleset for FILE and load it into the router; false (and reason) if not.
load() {
  "$BIN" lb --config "$1" --emit-nftables >"$1.nft" 2>"$1.err" \
    || { reason="--emit-nftables failed: $(head -c 300 "$1.err")"; return 1; }
  nsx qnr nft -f "$1.nft" 2>"$1.nft.err" \
    || { reason="nft -f refused the ruleset: $(head -c 300 "$1.nft.err")"; return 1; }
}

# backends TAG CONFIG: serve on the three backends (stats in $W/TAG_bN.json).
backends() {
  local i
  for i in 1 2 3; do backend "$1_b$i" qnb$i 10.98.1.1$i:4433 0a0$i "$2"; done
  ready "$1_b1" "$1_b2" "$1_b3"
}

# accepted TAG: connections accepted per backend, space-separated (after the backends stopped).
accepted() {
  local i out=""
  for i in 1 2 3; do out+="$(shard_sum "$W/$1_b$i.json" connections_accepted) "; done
  echo "$out"
}

# udp_in NS: UDP datagrams the namespace's stack received (its own /proc/net/snmp).
udp_in() { nsx "$1" awk '/^Udp: [0-9]/ { print $2; exit }' /proc/net/snmp; }

# --- 100 downloads spread over three backends ---------------------------------------------------
spread_case() {
  local conf=$W/spread.toml
  lb_config "$conf"
  load "$conf" || return
  backends spread "$conf" || return
  local batch i rc
  for batch in 0 1 2 3 4 5 6 7 8 9; do
    for i in 0 1 2 3 4 5 6 7 8 9; do get spread_get$batch$i "https://$SVC:4433/f100k.bin"; done
    for i in 0 1 2 3 4 5 6 7 8 9; do
      finish spread_get$batch$i 60
      rc=$?
      check "[ $rc = 0 ]" "get $batch$i exited $rc: $(tail -c 300 "$W/spread_get$batch$i.err")"
      check "cmp -s $W/www/f100k.bin $W/spread_get$batch$i/f100k.bin" "download $batch$i differs"
    done
    [ -n "$reason" ] && return
  done
  for i in 1 2 3; do stop spread_b$i; done
  local a
  read -r -a a <<<"$(accepted spread)"
  log "spread: accepted ${a[*]}"
  check "[ ${a[0]} -gt 0 ] && [ ${a[1]} -gt 0 ] && [ ${a[2]} -gt 0 ]" "a backend took none of the 100: ${a[*]}"
  check "[ $((a[0] + a[1] + a[2])) = 100 ]" "accepted ${a[*]}: not 100 in all"
}

# --- a client whose port changes mid-download (and one that also moves to a new CID) ----------
# rebind_run TAG PORT [GET ARGS...]: a 12 MB download through a relay on PORT that forwards from
# C1:port_a, then after 1500 server datagrams (about 2 MB) from C1:port_b: the router sees a new
# 4-tuple mid-download. It must finish byte-exact on one backend, the others taking none of its
# datagrams as their own.
rebind_run() {
  local tag=$1 port=$2
  shift 2
  local conf=$W/$tag.toml
  lb_config "$conf"
  load "$conf" || return
  backends "$tag" "$conf" || return
  start ${tag}_relay qnc 60 $TOOL relay --listen-port "$port" --upstream $SVC:4433 --bind1 $C1 \
    --bind2 $C1 --switch-after 1500 --max-pps 4000 --limit 50 --idle 3 --cid-len $CID_LEN
  wait_for ${tag}_relay "relay ready" 10 || { reason="relay did not start"; return; }
  get ${tag}_get "$@" "https://127.0.0.1:$port/f12m.bin"
  finish ${tag}_get 60
  local rc=$?
  check "[ $rc = 0 ]" "get exited $rc: $(tail -c 300 "$W/${tag}_get.err")"
  check "cmp -s $W/www/f12m.bin $W/${tag}_get/f12m.bin" "download differs from the original"
  finish ${tag}_relay 10
  local line up_b
  line=$(grep '^relay:' "$W/${tag}_relay.out")
  up_b=$(sed -n 's/.*up_b=\([0-9]*\).*/\1/p' <<<"$line")
  check "[ ${up_b:-0} -gt 100 ]" "too little traffic after the port change: $line"
  local i
  for i in 1 2 3; do stop ${tag}_b$i; done
  local a u other=0
  read -r -a a <<<"$(accepted "$tag")"
  u=0
  for i in 1 2 3; do
    u=$((u + $(shard_sum "$W/${tag}_b$i.json" dropped_unknown_cid)))
    # datagrams a backend that accepted nothing took as its own (not dropped as unknown or
    # malformed): a connection split by the new 4-tuple or the new CID
    [ "${a[i - 1]}" = 0 ] && other=$((other + $(json "$W/${tag}_b$i.json" \
      "sum(s['datagrams_in'] - s['dropped_unknown_cid'] - s['dropped_malformed'] for s in j['shards'])")))
  done
  # Late stateless resets from the client (random DCIDs, hashed to any backend) show up as
  # unknown-CID drops; a connection split by the port change would fail the download instead.
  log "$tag: $line; accepted ${a[*]}; unknown-CID drops $u; datagrams on the other backends $other"
  check "[ $((a[0] + a[1] + a[2])) = 1 ]" "accepted ${a[*]}: the client opened more than one connection"
  check "[ $other = 0 ]" "the other backends took $other datagrams of the connection"
}

# the client keeps its CID: the new port carries the first one
rebind_case() {
  rebind_run rebind 7000
  check "[[ \"$(grep '^relay:' "$W/rebind_relay.out")\" == *b_uses_first=1* ]]" "the client changed its CID"
}

# The client also moves to a new server CID after 1 MB (get --new-cid-after, hq-interop), before
# the port change at about 2 MB: the new 4-tuple never carries the CID the connection began with,
# and the router routes it by the new CID's server ID (conntrack knows only the old 4-tuple).
rebind_cid_case() {
  rebind_run rebind_cid 7002 --new-cid-after 1000000
  check "grep -q 'CID moves 1' $W/rebind_cid_get.err" "get did not move to a new CID: $(tail -c 300 "$W/rebind_cid_get.err")"
  local line
  line=$(grep '^relay:' "$W/rebind_cid_relay.out")
  check "[[ \"$line\" =~ dcids_a=([2-9]|[1-9][0-9]) ]] && [[ \"$line\" == *b_uses_first=0* ]]" \
    "the relay did not see the CID change before the port change: $line"
}

# --- a backend marked down mid-download -------------------------------------------------------
down_case() {
  local conf=$W/down.toml
  lb_config "$conf"
  load "$conf" || return
  backends down "$conf" || return
  # a paced download, so it is still running when the backend goes down
  start down_relay qnc 60 $TOOL relay --listen-port 7001 --upstream $SVC:4433 --bind1 $C1 \
    --bind2 $C1 --max-pps 3000 --limit 50 --idle 3
  wait_for down_relay "relay ready" 10 || { reason="relay did not start"; return; }
  local before=() i
  for i in 1 2 3; do before[i]=$(udp_in qnb$i); done
  get down_get "https://127.0.0.1:7001/f12m.bin"
  # the backend holding the download is the one whose stack receives datagrams
  local owner="" deadline=$((SECONDS + 10))
  while [ -z "$owner" ] && [ $SECONDS -lt $deadline ]; do
    for i in 1 2 3; do [ "$(udp_in qnb$i)" -gt $((before[i] + 20)) ] && owner=$i; done
    sleep 0.05
  done
  [ -n "$owner" ] || { reason="the download reached no backend"; return; }
  lb_config "$conf" "$owner"
  load "$conf" || return
  check "alive down_get" "the download ended before the backend was marked down"
  for i in $(seq 10 39); do get down_new$i "https://$SVC:4433/f100k.bin"; done
  local rc
  for i in $(seq 10 39); do
    finish down_new$i 60
    rc=$?
    check "[ $rc = 0 ]" "new get $i exited $rc: $(tail -c 300 "$W/down_new$i.err")"
  done
  finish down_get 60
  rc=$?
  check "[ $rc = 0 ]" "the download on the down backend exited $rc: $(tail -c 300 "$W/down_get.err")"
  check "cmp -s $W/www/f12m.bin $W/down_get/f12m.bin" "the download on the down backend differs"
  for i in 1 2 3; do stop down_b$i; done
  local a
  read -r -a a <<<"$(accepted down)"
  log "down: backend $owner marked down; accepted ${a[*]}"
  check "[ ${a[owner - 1]} = 1 ]" "backend $owner took ${a[owner - 1]} connections after it was marked down (want only the download's)"
  check "[ $((a[0] + a[1] + a[2])) = 31 ]" "accepted ${a[*]}: not 31 in all"
}

# --- an encrypted config is refused -----------------------------------------------------------
refuse_case() {
  local conf=$W/enc.toml out rc
  lb_config "$conf"
  sed -i 's/^nonce_len = 8$/nonce_len = 8\nkey = "8f95f09245765f80256934e50c66207f"/' "$conf"
  out=$("$BIN" lb --config "$conf" --emit-nftables 2>&1)
  rc=$?
  check "[ $rc != 0 ]" "an encrypted config was not refused"
  check "[ \$(wc -l <<<\"\$out\") = 1 ] && grep -q 'is encrypted' <<<\"\$out\"" "refusal is not one line: $out"
}

for c in spread rebind rebind_cid down refuse; do
  ${c}_case
  verdict "$c"
done
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
