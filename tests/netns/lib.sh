# Helpers shared by the netns suites (sourced, not run). The sourcing script defines W (work
# directory), NSS (namespaces to delete on exit), PID (an associative array: name -> pid of
# `timeout`), pass and fail, and sources this file after them. Sets the EXIT trap (cleanup).

log() { printf '   %s\n' "$*" >&2; }

# The process started for NAME is `timeout`; the command runs as its only child.
child() { local p=${PID[$1]}; awk '{print $1}' "/proc/$p/task/$p/children" 2>/dev/null; }
# signal NAME SIG: signals the command (not `timeout`) by its process id.
signal() { local c; c=$(child "$1"); [ -n "$c" ] && kill -s "$2" "$c"; }
kill_all() { local c; c=$(child "$1"); [ -n "$c" ] && kill -KILL "$c" 2>/dev/null; kill -KILL "${PID[$1]}" 2>/dev/null; }

cleanup() {
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

