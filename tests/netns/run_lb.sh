#!/usr/bin/env bash
# Load balancer tests across network namespaces (root only).
#
#   tests/netns/run_lb.sh target/release/quicshard
#
# Prints `PASS name` or `FAIL name: reason` per case, then `N passed, N failed`. Not root: prints
# `NOT RUN: not root` and `0 passed, 0 failed`, exit 0. Exit status: 0 when nothing failed.
#
# Topology (all addresses in 10.99.0.0/24 exist only inside these namespaces):
#
#   qsc  (client)  eth0 10.99.0.10, 10.99.0.20 (second address: the "moved" client)
#   qslb (LB)      eth0 10.99.0.1,  10.99.0.100 (the VIP, for dsr)
#   qsb1 (backend) eth0 10.99.0.11, lo 10.99.0.100 (VIP, dsr only)
#   qsb2 (backend) eth0 10.99.0.12, lo 10.99.0.100 (VIP, dsr only)
#   qsnet          bridge br0 joining the four veth peers
#
# Cases: proxy, dsr (both also with the inline pipeline: proxy_inline, dsr_inline), migration
# (client address change mid-download), rotation (a new QUIC-LB config id and a new backend added
# by SIGHUP during a download), down_and_flood (a backend marked down; a 50k-datagram garbage
# flood during a live download). Every process is started
# with a deadline and every wait polls a condition with a deadline. The namespaces are deleted
# on exit (trap).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# Process, wait, server, download and verdict helpers (preflight, start, backend, ready, get ...).
. "$HERE/lib.sh"
preflight "$@"
NSS=(qsc qslb qsb1 qsb2 qsnet)
CLIENT_NS=qsc
W=$(mktemp -d /tmp/qs-netns.XXXXXX)
VIP=10.99.0.100
LB=10.99.0.1
C1=10.99.0.10
C2=10.99.0.20
B1=10.99.0.11
B2=10.99.0.12
KEY1=8f95f09245765f80256934e50c66207f
KEY2=4d0b7a5e9c2f18e36a01b2c3d4e5f607

setup() {
  for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null; ip netns add "$ns" || return 1; done
  nsx qsnet ip link add br0 type bridge || return 1
  nsx qsnet ip link set br0 up
  local pair
  for pair in qsc:vc qslb:vlb qsb1:vb1 qsb2:vb2; do
    local ns=${pair%%:*} port=${pair##*:}
    ip -n qsnet link add "$port" type veth peer name eth0 netns "$ns" || return 1
    nsx qsnet ip link set "$port" master br0
    nsx qsnet ip link set "$port" up
    nsx "$ns" ip link set lo up
    nsx "$ns" ip link set eth0 up
  done
  nsx qsc ip addr add $C1/24 dev eth0
  nsx qsc ip addr add $C2/24 dev eth0
  nsx qslb ip addr add $LB/24 dev eth0
  nsx qsb1 ip addr add $B1/24 dev eth0
  nsx qsb2 ip addr add $B2/24 dev eth0
  # DSR: the VIP lives on the LB's eth0 and on the backends' lo; clients reach it via the LB.
  nsx qslb ip addr add $VIP/32 dev eth0
  nsx qsc ip route add $VIP/32 via $LB
  for ns in qsb1 qsb2; do
    nsx "$ns" ip addr add $VIP/32 dev lo
    nsx "$ns" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
  done
  # wait until the bridge forwards on all four ports
  bridge_forwarding qsnet 4
}

mkdir -p "$W/www"
head -c 2000000 /dev/urandom >"$W/www/f2m.bin"
head -c 12000000 /dev/urandom >"$W/www/f12m.bin"

setup_or_exit

# lb_config FILE MODE LISTEN VIRTUAL BACKENDS... where a backend is SID@ADDR[@down]; adds quic_lb
# id 1 (and id 2 when QUIC_LB2=1).
lb_config() {
  local f=$1 mode=$2 listen=$3 virt=$4
  shift 4
  {
    echo "listen = \"$listen\""
    echo "mode = \"$mode\""
    if [ -n "${PIPELINE:-}" ]; then
      echo "pipeline = \"$PIPELINE\""
      echo "receivers = 2"
    fi
    [ -n "$virt" ] && echo "virtual_address = \"$virt\""
    echo "[[quic_lb]]"
    echo "id = 1"
    echo "server_id_len = 2"
    echo "nonce_len = 8"
    echo "key = \"$KEY1\""
    if [ "${QUIC_LB2:-0}" = 1 ]; then
      echo "[[quic_lb]]"
      echo "id = 2"
      echo "server_id_len = 2"
      echo "nonce_len = 6"
      echo "key = \"$KEY2\""
    fi
    local b
    for b in "$@"; do
      IFS=@ read -r sid addr down <<<"$b"
      echo "[[backend]]"
      echo "server_id = \"$sid\""
      echo "address = \"$addr\""
      [ "$down" = down ] && echo "down = true"
    done
  } >"$f"
}

lb() { start "$1" qslb 120 "$BIN" lb --config "$2" --stats-file "$W/$1.json"; }

# --- proxy and dsr: 100 handshakes + three 2 MB downloads --------------------------------------
spread_case() {
  local mode=$1 target listen virt b1addr b2addr
  # PIPELINE=inline runs the LB's run-to-completion pipeline with 2 workers
  local tag=$mode${PIPELINE:+_$PIPELINE}
  if [ "$mode" = proxy ]; then
    target=$LB:4433 listen=$LB:4433 virt="" b1addr=$B1:4433 b2addr=$B2:4433
  else
    target=$VIP:443 listen=$VIP:443 virt=$VIP:443 b1addr=$B1:5443 b2addr=$B2:5443
  fi
  local conf=$W/$tag.toml
  lb_config "$conf" "$mode" "$listen" "$virt" "0a01@$b1addr" "0a02@$b2addr"
  if [ "$mode" = proxy ]; then
    backend ${tag}_b1 qsb1 $B1:4433 0a01 "$conf"
    backend ${tag}_b2 qsb2 $B2:4433 0a02 "$conf"
  else
    backend ${tag}_b1 qsb1 $VIP:443 0a01 "$conf" --decap "$b1addr"
    backend ${tag}_b2 qsb2 $VIP:443 0a02 "$conf" --decap "$b2addr"
  fi
  lb ${tag}_lb "$conf"
  ready ${tag}_b1 ${tag}_b2 ${tag}_lb || return
  start ${tag}_bench qsc 60 "$BIN" bench --connect "$target" --insecure --mode handshake \
    --requests 100 --connections 4 --shards 1 --json
  finish ${tag}_bench 60
  local rc=$?
  check "[ $rc = 0 ]" "bench exited $rc: $(tail -c 300 "$W/${tag}_bench.err")"
  check "[ \"\$(json $W/${tag}_bench.out 'j[\"handshakes\"]')\" = 100 ]" \
    "bench completed $(json "$W/${tag}_bench.out" 'j["handshakes"]' 2>/dev/null) of 100 handshakes"
  local i
  for i in 1 2 3; do
    get ${tag}_get$i "https://$target/f2m.bin"
    finish ${tag}_get$i 60
    rc=$?
    check "[ $rc = 0 ]" "get $i exited $rc: $(tail -c 300 "$W/${tag}_get$i.err")"
    check "cmp -s $W/www/f2m.bin $W/${tag}_get$i/f2m.bin" "download $i differs from the original"
  done
  stop ${tag}_lb
  stop ${tag}_b1
  stop ${tag}_b2
  local f1=$W/${tag}_b1.json f2=$W/${tag}_b2.json
  check "[ -s $f1 ] && [ -s $f2 ]" "a backend wrote no stats"
  [ -n "$reason" ] && return
  local a1 a2 h1 h2 u1 u2
  a1=$(shard_sum "$f1" connections_accepted) a2=$(shard_sum "$f2" connections_accepted)
  h1=$(shard_sum "$f1" handshakes) h2=$(shard_sum "$f2" handshakes)
  u1=$(shard_sum "$f1" dropped_unknown_cid) u2=$(shard_sum "$f2" dropped_unknown_cid)
  log "$mode: accepted $a1 + $a2, handshakes $h1 + $h2, unknown-cid drops $u1 + $u2"
  check "[ $a1 -gt 0 ] && [ $a2 -gt 0 ]" "both backends must be used: accepted $a1 / $a2"
  check "[ $((a1 + a2)) = 103 ]" "accepted $a1 + $a2 != 103 connections"
  check "[ $((h1 + h2)) = 103 ]" "handshakes $h1 + $h2 != 103 connections"
  check "[ $((u1 + u2)) = 0 ]" "backends dropped $u1 + $u2 datagrams with unknown CIDs (a connection was split)"
  local lbj=$W/${tag}_lb.json by_cid relayed
  by_cid=$(json "$lbj" 'j["routing"]["routed_by_cid"]')
  relayed=$(json "$lbj" 'j["forwarders"]["replies_relayed"]')
  check "[ $by_cid -gt 0 ]" "the LB routed nothing by CID"
  if [ "$mode" = dsr ]; then
    local inj1 inj2 de
    inj1=$(json "$f1" 'j["decap"]["injected"]') inj2=$(json "$f2" 'j["decap"]["injected"]')
    de=$(json "$f1" 'j["decap"]["dropped_decap_error"] + j["decap"]["dropped_wrong_destination"]')
    log "dsr: injected $inj1 + $inj2, LB replies relayed $relayed"
    check "[ $inj1 -gt 0 ] && [ $inj2 -gt 0 ]" "a backend decapsulated nothing ($inj1 / $inj2)"
    check "[ $de = 0 ]" "backend 1 dropped $de encapsulated datagrams"
    check "[ $relayed = 0 ]" "replies went through the LB in dsr mode ($relayed)"
  else
    check "[ $relayed -gt 0 ]" "proxy mode relayed no replies"
  fi
}

# late_resets FILES...: unknown-CID drops summed over backends. Through the paced relay some are
# expected: server datagrams still queued in the relay reach the client after it closed the
# connection, its endpoint answers each with a stateless reset (a short header with a random
# DCID), and the LB routes those by its fallback to a backend, which drops them. How many depends
# on what the relay's socket buffer holds when the client closes (21 seen in one CI run), so in the
# migration case they are logged, not bounded; a split connection shows instead as datagrams the
# other backend took as its own, which is asserted to be zero.
late_resets() { local f n=0; for f in "$@"; do n=$((n + $(shard_sum "$f" dropped_unknown_cid))); done; echo $n; }

# --- client address change mid-download ------------------------------------------------------
migration_case() {
  local conf=$W/mig.toml
  lb_config "$conf" proxy $LB:4433 "" "0a01@$B1:4433" "0a02@$B2:4433"
  backend mig_b1 qsb1 $B1:4433 0a01 "$conf"
  backend mig_b2 qsb2 $B2:4433 0a02 "$conf"
  lb mig_lb "$conf"
  ready mig_b1 mig_b2 mig_lb || return
  # the relay forwards from C1:port_a, then after 1500 server datagrams from C2:port_b
  start mig_relay qsc 60 $TOOL relay --listen-port 7000 --upstream $LB:4433 --bind1 $C1 --bind2 $C2 \
    --switch-after 1500 --max-pps 4000 --limit 50 --idle 3
  wait_for mig_relay "relay ready" 10 || { reason="relay did not start"; return; }
  get mig_get "https://127.0.0.1:7000/f12m.bin"
  finish mig_get 60
  local rc=$?
  check "[ $rc = 0 ]" "get exited $rc: $(tail -c 300 "$W/mig_get.err")"
  check "cmp -s $W/www/f12m.bin $W/mig_get/f12m.bin" "download differs from the original"
  finish mig_relay 10
  local line
  line=$(grep '^relay:' "$W/mig_relay.out")
  log "migration: $line"
  check "[[ \"$line\" == *switched=1* ]]" "the relay never switched address: $line"
  local up_b down_b
  up_b=$(sed -n 's/.*up_b=\([0-9]*\).*/\1/p' <<<"$line")
  down_b=$(sed -n 's/.*down_b=\([0-9]*\).*/\1/p' <<<"$line")
  check "[ ${up_b:-0} -gt 100 ] && [ ${down_b:-0} -gt 100 ]" "too little traffic after the switch: $line"
  stop mig_lb
  stop mig_b1
  stop mig_b2
  [ -n "$reason" ] && return
  local a1 a2 h other sessions f_other
  a1=$(shard_sum "$W/mig_b1.json" connections_accepted)
  a2=$(shard_sum "$W/mig_b2.json" connections_accepted)
  h=$(( $(shard_sum "$W/mig_b1.json" handshakes) + $(shard_sum "$W/mig_b2.json" handshakes) ))
  if [ "$a1" = 1 ]; then f_other=$W/mig_b2.json; else f_other=$W/mig_b1.json; fi
  # Datagrams the other backend took as its own (not dropped as unknown CIDs: see late_resets).
  other=$(json "$f_other" "sum(s['datagrams_in'] - s['dropped_unknown_cid'] - s['dropped_malformed'] for s in j['shards'])")
  sessions=$(json "$W/mig_lb.json" 'j["forwarders"]["sessions_opened"]')
  log "migration: accepted $a1 / $a2, handshakes $h, LB sessions opened $sessions, datagrams on the other backend $other, unknown-cid drops $(late_resets "$W/mig_b1.json" "$W/mig_b2.json")"
  check "[ $((a1 + a2)) = 1 ] && [ $h = 1 ]" "one connection expected, backends accepted $a1 + $a2, handshakes $h"
  check "[ $other = 0 ]" "the other backend received $other datagrams of the connection"
  check "[ $sessions -ge 2 ]" "the LB saw only $sessions client address(es)"
}

# --- config rotation: add quic_lb id 2 and a third backend issuing id-2 CIDs -----------------
rotation_case() {
  local conf=$W/rot.toml old=$W/rot1.toml new=$W/rot2.toml
  lb_config "$old" proxy $LB:4433 "" "0a01@$B1:4433" "0a02@$B2:4433"
  QUIC_LB2=1 lb_config "$new" proxy $LB:4433 "" "0a01@$B1:4433" "0a02@$B2:4433" "0a03@$B1:4434"
  cp "$old" "$conf"
  backend rot_b1 qsb1 $B1:4433 0a01 "$old" --quic-lb-id 1
  backend rot_b2 qsb2 $B2:4433 0a02 "$old" --quic-lb-id 1
  lb rot_lb "$conf"
  ready rot_b1 rot_b2 rot_lb || return
  # a long download (paced by a relay) that spans the rotation
  start rot_relay qsc 60 $TOOL relay --listen-port 7001 --upstream $LB:4433 --bind1 $C1 --bind2 $C1 \
    --max-pps 3000 --limit 50 --idle 3
  wait_for rot_relay "relay ready" 10 || { reason="relay did not start"; return; }
  get rot_get "https://127.0.0.1:7001/f12m.bin"
  # rotate once the download is under way
  local deadline=$((SECONDS + 10))
  until [ "$(stat -c %s "$W/rot_get/f12m.bin" 2>/dev/null || echo 0)" -gt 1000000 ]; do
    [ $SECONDS -lt $deadline ] || { reason="the long download did not start"; return; }
    sleep 0.05
  done
  backend rot_b3 qsb1 $B1:4434 0a03 "$new" --quic-lb-id 2
  ready rot_b3 || return
  cp "$new" "$conf"
  signal rot_lb HUP
  wait_for_err() { local d=$((SECONDS + 5)); until grep -q "$2" "$W/$1.err"; do [ $SECONDS -lt $d ] || return 1; sleep 0.05; done; }
  wait_for_err rot_lb "reloaded" || { reason="the LB did not log the reload: $(tail -c 300 "$W/rot_lb.err")"; return; }
  # capture the DCIDs the LB sends to the new backend (QUIC-LB part: 1 + 2 + 6 bytes)
  start rot_sniff qsb1 30 $TOOL sniff --iface eth0 --port 4434 --cid-len 9 --count 5 --limit 20
  wait_for rot_sniff "sniff ready" 10 || { reason="sniffer did not start"; return; }
  start rot_bench qsc 60 "$BIN" bench --connect $LB:4433 --insecure --mode handshake \
    --requests 30 --connections 2 --shards 1 --json
  finish rot_bench 60
  local rc=$?
  check "[ $rc = 0 ]" "bench after the rotation exited $rc: $(tail -c 300 "$W/rot_bench.err")"
  local dl_size
  dl_size=$(stat -c %s "$W/rot_get/f12m.bin" 2>/dev/null || echo 0)
  log "rotation: download at $dl_size bytes when the post-rotation bench ended"
  finish rot_get 60
  rc=$?
  check "[ $rc = 0 ]" "the download spanning the rotation exited $rc: $(tail -c 300 "$W/rot_get.err")"
  check "cmp -s $W/www/f12m.bin $W/rot_get/f12m.bin" "the download spanning the rotation differs"
  check "[ $dl_size -lt 12000000 ]" "the download ended before the new connections did (no overlap)"
  finish rot_sniff 30
  stop rot_lb
  stop rot_b1
  stop rot_b2
  stop rot_b3
  [ -n "$reason" ] && return
  local a1 a2 a3 h u n
  a1=$(shard_sum "$W/rot_b1.json" connections_accepted)
  a2=$(shard_sum "$W/rot_b2.json" connections_accepted)
  a3=$(shard_sum "$W/rot_b3.json" connections_accepted)
  h=$(( $(shard_sum "$W/rot_b1.json" handshakes) + $(shard_sum "$W/rot_b2.json" handshakes) + $(shard_sum "$W/rot_b3.json" handshakes) ))
  u=$(( $(shard_sum "$W/rot_b1.json" dropped_unknown_cid) + $(shard_sum "$W/rot_b2.json" dropped_unknown_cid) + $(shard_sum "$W/rot_b3.json" dropped_unknown_cid) ))
  log "rotation: accepted $a1 / $a2 / $a3 (new), handshakes $h, unknown-cid drops $u"
  check "[ $a3 -gt 0 ]" "no new connection reached the new backend"
  check "[ $((a1 + a2 + a3)) = 31 ] && [ $h = 31 ]" "accepted $a1+$a2+$a3, handshakes $h: expected 31"
  check "[ $u -le 5 ]" "backends dropped $u datagrams of unknown CIDs (more than late resets explain)"
  n=0
  local cid out
  while read -r cid; do
    [ -n "$cid" ] && [ "$cid" != "sniff ready" ] || continue
    out=$("$BIN" cid decode --config-id 2 --server-id-len 2 --nonce-len 6 --key $KEY2 "$cid" 2>&1)
    log "rotation: DCID $cid -> $out"
    check "[[ \"$out\" == *'config_id=2 server_id=0a03'* ]]" "DCID $cid to the new backend does not decode to config 2 / 0a03: $out"
    n=$((n + 1))
  done <"$W/rot_sniff.out"
  check "[ $n -gt 0 ]" "captured no short-header datagram to the new backend"
}

# --- a backend marked down, then a garbage flood, during a live download ---------------------
down_flood_case() {
  local conf=$W/down.toml
  lb_config "$conf" proxy $LB:4433 "" "0a01@$B1:4433" "0a02@$B2:4433"
  backend down_b1 qsb1 $B1:4433 0a01 "$conf"
  backend down_b2 qsb2 $B2:4433 0a02 "$conf"
  lb down_lb "$conf"
  ready down_b1 down_b2 down_lb || return
  start down_relay qsc 60 $TOOL relay --listen-port 7002 --upstream $LB:4433 --bind1 $C1 --bind2 $C1 \
    --max-pps 2000 --limit 50 --idle 3
  wait_for down_relay "relay ready" 10 || { reason="relay did not start"; return; }
  get down_get "https://127.0.0.1:7002/f12m.bin"
  local deadline=$((SECONDS + 10))
  until [ "$(stat -c %s "$W/down_get/f12m.bin" 2>/dev/null || echo 0)" -gt 500000 ]; do
    [ $SECONDS -lt $deadline ] || { reason="the live download did not start"; return; }
    sleep 0.05
  done
  lb_config "$conf" proxy $LB:4433 "" "0a01@$B1:4433" "0a02@$B2:4433@down"
  signal down_lb HUP
  deadline=$((SECONDS + 5))
  until grep -q reloaded "$W/down_lb.err"; do
    [ $SECONDS -lt $deadline ] || { reason="the LB did not log the reload"; return; }
    sleep 0.05
  done
  start down_bench qsc 60 "$BIN" bench --connect $LB:4433 --insecure --mode handshake \
    --requests 20 --connections 2 --shards 1 --json
  finish down_bench 60
  local rc=$?
  check "[ $rc = 0 ]" "bench exited $rc: $(tail -c 300 "$W/down_bench.err")"
  start down_flood qsc 30 $TOOL flood --to $LB:4433 --count 50000 --rate 25000
  finish down_flood 30
  rc=$?
  check "[ $rc = 0 ]" "flood exited $rc"
  local flood_end_size
  flood_end_size=$(stat -c %s "$W/down_get/f12m.bin" 2>/dev/null || echo 0)
  finish down_get 60
  rc=$?
  check "[ $rc = 0 ]" "the live download exited $rc: $(tail -c 300 "$W/down_get.err")"
  check "cmp -s $W/www/f12m.bin $W/down_get/f12m.bin" "the live download differs from the original"
  check "[ $flood_end_size -lt 12000000 ]" "the download ended before the flood did (no overlap)"
  log "down_and_flood: download at $flood_end_size bytes when the flood ended; $(cat "$W/down_flood.out")"
  stop down_lb
  stop down_b1
  stop down_b2
  [ -n "$reason" ] && return
  local a1 a2 u2 lbj=$W/down_lb.json
  a1=$(shard_sum "$W/down_b1.json" connections_accepted)
  a2=$(shard_sum "$W/down_b2.json" connections_accepted)
  u2=$(shard_sum "$W/down_b2.json" dropped_unknown_cid)
  log "down_and_flood: accepted $a1 / $a2 (down); b2 unknown-cid drops $u2"
  # the live download may be on either backend; everything after the reload is on b1
  check "[ $a2 -le 1 ] && [ $((a1 + a2)) = 21 ]" "accepted $a1 / $a2: after b2 went down all 20 new connections must go to b1"
  check "[ $u2 -le 5 ]" "the flood reached the down backend ($u2 unknown-CID drops)"
  local received dropped reserved
  received=$(json "$lbj" 'j["receivers"]["received"]')
  dropped=$(json "$lbj" 'sum(v for k, v in j["slow_path"].items() if k.startswith("dropped")) + sum(v for k, v in j["receivers"].items() if k.startswith("dropped"))')
  reserved=$(json "$lbj" 'j["routing"]["cid_reserved"]')
  log "down_and_flood: LB received $received, dropped $dropped, reserved-codepoint CIDs $reserved; slow path $(json "$lbj" 'j["slow_path"]')"
  check "[ $received -ge 50000 ]" "the LB counted only $received datagrams"
  check "[ $dropped -ge 39000 ]" "the LB dropped (and counted) only $dropped of the 40000 invalid flood datagrams"
  check "[ $reserved -ge 9000 ]" "the LB counted only $reserved reserved-codepoint CIDs of 10000"
}

for c in "proxy:spread_case proxy" "dsr:spread_case dsr" "proxy_inline:PIPELINE=inline spread_case proxy" \
  "dsr_inline:PIPELINE=inline spread_case dsr" "migration:migration_case" \
  "rotation:rotation_case" "down_and_flood:down_flood_case"; do
  name=${c%%:*}
  if [ -n "${QS_NETNS_ONLY:-}" ] && [[ " $QS_NETNS_ONLY " != *" $name "* ]]; then continue; fi
  reason=""
  eval "${c#*:}"
  verdict "$name"
done
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
