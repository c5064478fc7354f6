# Helpers shared by the netns suites (sourced, not run; first thing after `set -uo pipefail`,
# with HERE the suites' directory). Declares TOOL (udptool.py), PID (an associative array: name -> pid of `timeout`), pass and fail, and sets the EXIT
# trap (cleanup). The sourcing script then calls `preflight "$@"` (root and binary checks: sets
# BIN) and defines NSS (namespaces to delete on exit), W (work directory; the served files in
# $W/www) and CLIENT_NS (where `get` runs).

TOOL="python3 $HERE/udptool.py"
declare -A PID=()
pass=0
fail=0

# preflight ARGS...: the suite's arguments. Not root: prints `NOT RUN: not root` and exits 0. No
# executable quicshard binary in ARGS: prints the usage and `FAIL setup`, exits 1. Sets BIN.
preflight() {
  if [ "$(id -u)" != 0 ]; then
    echo "NOT RUN: not root (network namespaces need CAP_NET_ADMIN)"
    echo "0 passed, 0 failed"
    exit 0
  fi
  if [ $# -lt 1 ] || [ ! -x "$1" ]; then
    echo "usage: $0 PATH/TO/quicshard (release build)" >&2
    echo "FAIL setup: no quicshard binary given"
    echo "0 passed, 1 failed"
    exit 1
  fi
  BIN=$(realpath "$1")
}

log() { printf '   %s\n' "$*" >&2; }

# The process started for NAME is `timeout`; the command runs as its only child.
child() { local p=${PID[$1]}; awk '{print $1}' "/proc/$p/task/$p/children" 2>/dev/null; }
# signal NAME SIG: signals the command (not `timeout`) by its process id.
signal() { local c; c=$(child "$1"); [ -n "$c" ] && kill -s "$2" "$c"; }
kill_all() { local c; c=$(child "$1"); [ -n "$c" ] && kill -KILL "$c" 2>/dev/null; kill -KILL "${PID[$1]}" 2>/dev/null; }

cleanup() {
  [ -n "${W:-}" ] || return 0 # exited before anything was made
  for name in "${!PID[@]}"; do kill_all "$name"; done
  for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null; done
  if [ -z "${QS_NETNS_KEEP:-}" ]; then rm -rf "$W"; else echo "kept $W" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# start NAME NS TIMEOUT_SECS CMD...: runs CMD in NS in the background, killed after TIMEOUT_SECS
# at the latest; stdout/stderr in $W/NAME.out / .err.
start() {
  local name=$1 ns=$2 limit=$3
  shift 3
  ip netns exec "$ns" timeout -s KILL "$limit" "$@" >"$W/$name.out" 2>"$W/$name.err" &
  PID[$name]=$!
}

alive() { kill -0 "${PID[$1]}" 2>/dev/null; }

# setup_or_exit: runs the sourcing script's `setup` (namespaces, links, addresses); if it fails,
# prints `FAIL setup` with its errors and exits 1.
setup_or_exit() {
  if ! command -v ip >/dev/null || ! setup 2>"$W/setup.err"; then
    echo "FAIL setup: could not build the namespaces: $(tr '\n' ' ' <"$W/setup.err" | cut -c1-200)"
    echo "0 passed, 1 failed"
    exit 1
  fi
}

# bridge_forwarding NS N: waits (10 s at most) until N bridge ports in NS are forwarding.
bridge_forwarding() {
  local deadline=$((SECONDS + 10))
  until [ "$(bridge -n "$1" link show | grep -c 'state forwarding')" = "$2" ]; do
    [ $SECONDS -lt $deadline ] || { echo "bridge ports not forwarding" >&2; return 1; }
    sleep 0.05
  done
}

# backend NAME NS LISTEN SID CONFIG [ARGS...]: `quicshard serve` of $W/www in NS on LISTEN with 2
# shards, server ID SID and the QUIC-LB configs of CONFIG, stats in $W/NAME.json; ARGS added.
backend() {
  local name=$1 ns=$2 listen=$3 sid=$4 conf=$5
  shift 5
  start "$name" "$ns" 120 "$BIN" serve --listen "$listen" --shards 2 --root "$W/www" \
    --server-id "$sid" --quic-lb-config "$conf" --stats-file "$W/$name.json" "$@"
}

# ready NAME...: until each server NAME printed `listening on` (10 s each); false, with the
# case's reason set, if one did not.
ready() {
  local n
  for n in "$@"; do
    wait_for "$n" "listening on" 10 || { reason="$n did not start: $(head -c 300 "$W/$n.err")"; return 1; }
  done
}

# get NAME ARGS... URL...: a download in $CLIENT_NS into $W/NAME/ (60 s at most).
get() {
  local name=$1
  shift
  start "$name" "$CLIENT_NS" 60 "$BIN" get --insecure --output "$W/$name" "$@"
}

# wait_for NAME PATTERN SECS: until NAME's stdout has a line matching PATTERN.
wait_for() {
  local name=$1 pat=$2 deadline=$((SECONDS + $3))
  while [ $SECONDS -lt $deadline ]; do
    grep -q -- "$pat" "$W/$name.out" 2>/dev/null && return 0
    alive "$name" || { grep -q -- "$pat" "$W/$name.out" 2>/dev/null; return; }
    sleep 0.05
  done
  return 1
}

# finish NAME SECS: waits for NAME to exit on its own; returns its exit status (124: timed out,
# then it is killed).
finish() {
  local name=$1 deadline=$((SECONDS + $2)) rc
  while alive "$name" && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
  if alive "$name"; then
    kill_all "$name"
    wait "${PID[$name]}" 2>/dev/null
    unset "PID[$name]"
    return 124
  fi
  wait "${PID[$name]}"
  rc=$?
  unset "PID[$name]"
  return $rc
}

# stop NAME: SIGTERM, then wait up to 10 s for a clean exit (stats files are written on exit).
stop() {
  local name=$1
  [ -n "${PID[$name]:-}" ] || return 0
  signal "$name" TERM 2>/dev/null
  finish "$name" 10
}

# json FILE PYTHON_EXPR: evaluates EXPR with `j` bound to the file's JSON; prints the result.
json() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"; }
# shard_sum FILE KEY: a serve --stats-file counter summed over shards.
shard_sum() { json "$1" "sum(s['$2'] for s in j['shards'])"; }

# Case bookkeeping: `check COND_RESULT MESSAGE`; the first failed check is the case's reason.
reason=""
check() { if [ -z "$reason" ] && ! eval "$1"; then reason=$2; fi; }
verdict() {
  if [ -z "$reason" ]; then echo "PASS $1"; pass=$((pass + 1));
  else echo "FAIL $1: $reason"; fail=$((fail + 1)); fi
  for name in "${!PID[@]}"; do stop "$name" >/dev/null 2>&1; done
  reason=""
}

