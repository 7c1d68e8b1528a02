# Helpers for .ci/e2e.sh (sourced after .ci/lib.sh): steps, assertions on
# berth's JSON log and the upstreams' access logs, scenario bookkeeping, cleanup.

RESULTS=()
S_FAILED=0 S_SKIP=""
STEP_TIMEOUT=${STEP_TIMEOUT:-180}
E2E_OK=0 E2E_DONE=0
T0=${T0:-$(date +%s)}

# scenario NAME FUNC : run one scenario and record PASS / FAIL / SKIP.
scenario() { local name=$1 fn=$2 t=$(date +%s) rc
  S_FAILED=0 S_SKIP=""
  echo; echo "=== $name"
  if ! kill -0 "$BERTH_PID" 2>/dev/null; then
    echo "  FAIL berth is not running (exited?); last log lines:"; tail -20 "$BLOG" | sed 's/^/    | /'
    RESULTS+=("FAIL  $name: berth is not running"); return
  fi
  "$fn"; rc=$?
  local took=$(( $(date +%s) - t ))s
  if [ "$S_FAILED" = 1 ] || { [ $rc != 0 ] && [ -z "$S_SKIP" ]; }; then
    echo "--- FAIL $name ($took)"; RESULTS+=("FAIL  $name ($took)")
  elif [ -n "$S_SKIP" ]; then
    echo "--- SKIP $name: $S_SKIP"; RESULTS+=("SKIP  $name: $S_SKIP")
  else
    echo "--- PASS $name ($took)"; RESULTS+=("PASS  $name ($took)")
  fi
}

# unavailable REASON : a client cannot be installed or started. FAIL when
# BERTH_E2E_REQUIRED=1, else SKIP. Always returns 1 (callers `|| return`).
unavailable() {
  if [ "$REQUIRED" = 1 ]; then echo "  FAIL $1 (BERTH_E2E_REQUIRED=1)"; S_FAILED=1
  else echo "  skip: $1"; S_SKIP=$1; fi
  return 1
}
# need CMD... : every command is installed, else unavailable.
need() { local c; for c in "$@"; do command -v "$c" >/dev/null || { unavailable "$c is not installed"; return 1; }; done; }
need_root() { [ "$(id -u)" = 0 ] || { unavailable "$1 needs root"; return 1; }; }

# step DESC CMD... : run a client command (with a timeout); print ok, or FAIL
# with the command line and the client's own output. Output stays in $OUT.
OUT=$RT/step.out
step() { local desc=$1; shift
  timeout -k 5 "$STEP_TIMEOUT" "$@" >"$OUT" 2>&1; local rc=$?
  if [ $rc = 0 ]; then echo "  ok   $desc"; return 0; fi
  echo "  FAIL $desc (exit $rc$([ $rc = 124 ] && echo ", timed out after ${STEP_TIMEOUT}s"))"
  echo "    \$ $*"; tail -n 25 "$OUT" | sed 's/^/    | /'
  S_FAILED=1; return 1
}
# step_fails DESC PATTERN CMD... : the command must fail and its output match PATTERN (ERE, case-insensitive).
step_fails() { local desc=$1 pat=$2; shift 2
  timeout -k 5 "$STEP_TIMEOUT" "$@" >"$OUT" 2>&1; local rc=$?
  if [ $rc != 0 ] && grep -qiE "$pat" "$OUT"; then echo "  ok   $desc"; return 0; fi
  echo "  FAIL $desc (exit $rc; wanted a failure matching /$pat/)"
  echo "    \$ $*"; tail -n 25 "$OUT" | sed 's/^/    | /'
  S_FAILED=1; return 1
}
# check DESC BASH-CONDITION [DETAIL] : an assertion on values already computed.
check() { local desc=$1 cond=$2 detail=${3:-}
  if eval "$cond"; then echo "  ok   $desc"; return 0; fi
  echo "  FAIL $desc"; echo "    condition: $cond"; [ -n "$detail" ] && printf '%s\n' "$detail" | sed 's/^/    | /'
  S_FAILED=1; return 1
}
# equal DESC GOT WANT
equal() { if [ "$2" = "$3" ]; then echo "  ok   $1"; return 0; fi
  echo "  FAIL $1"; echo "    got:  $2"; echo "    want: $3"; S_FAILED=1; return 1; }

# mark FILE : current line count, to look only at what is logged after it.
mark() { wc -l <"$1" 2>/dev/null || echo 0; }

# bsync : wait until berth's log holds every line of the requests made so
# far. berth writes its lines in order, in batches (when it falls idle, at
# most one batch every 5 ms): one more request, with a user agent of its
# own, is logged after all of them; once its line is in the file, so are
# theirs.
bsync() { local ua="e2e-sync-$$-$RANDOM$RANDOM" i
  curl -s -o /dev/null -A "$ua" "http://$B/v2/_catalog?n=1" || true
  for i in $(seq 200); do grep -qF "\"$ua\"" "$BLOG" && return 0; sleep 0.025; done
  echo "  (bsync: berth did not log the sync request within 5 s)"
}
# blog FROM JQ-CONDITION : berth's request log lines after line FROM matching
# the condition (the sync request left out).
blog() { bsync >&2
  tail -n +$(( $1 + 1 )) "$BLOG" | jq -Rc "fromjson? | select(.message==\"request\") | select((.user_agent // \"\") | startswith(\"e2e-sync-\") | not) | select($2)"; }
# bexpect DESC FROM JQ-CONDITION [MIN] : at least MIN (default 1) berth request log lines match.
bexpect() { local desc=$1 from=$2 cond=$3 min=${4:-1} n
  n=$(blog "$from" "$cond" | wc -l)
  if [ "$n" -ge "$min" ]; then echo "  ok   $desc (berth log: $n request(s))"; return 0; fi
  echo "  FAIL $desc: berth logged $n matching request(s), want >= $min"
  echo "    jq condition: $cond"; echo "    berth request log since the mark:"
  blog "$from" 'true' | jq -r '"\(.method) \(.path) kind=\(.kind) route=\(.route) status=\(.status)"' | tail -n 30 | sed 's/^/    | /'
  S_FAILED=1; return 1
}
# bexpect_none DESC FROM JQ-CONDITION : no berth request log line matches.
bexpect_none() { local desc=$1 from=$2 cond=$3 n
  n=$(blog "$from" "$cond" | wc -l)
  if [ "$n" = 0 ]; then echo "  ok   $desc"; return 0; fi
  echo "  FAIL $desc: berth logged $n such request(s):"
  blog "$from" "$cond" | tail -n 20 | sed 's/^/    | /'; S_FAILED=1; return 1
}

# uplog LOG FROM : an upstream registry's access-log request lines ("METHOD URI") after line FROM.
uplog() { tail -n +$(( $2 + 1 )) "$1" | sed -nE 's/^[0-9.]+ - - \[[^]]*\] "([A-Z]+) ([^ ]+) HTTP[^"]*" ([0-9]+) .*/\1 \2 \3/p'; }
# upexpect DESC LOG FROM REGEX [MIN] : at least MIN access-log lines match REGEX (on "METHOD URI STATUS").
upexpect() { local desc=$1 log=$2 from=$3 re=$4 min=${5:-1} n
  n=$(uplog "$log" "$from" | grep -cE "$re")
  if [ "$n" -ge "$min" ]; then echo "  ok   $desc (upstream log: $n)"; return 0; fi
  echo "  FAIL $desc: upstream $(basename "$log" .log) logged $n request(s) matching /$re/, want >= $min"
  uplog "$log" "$from" | tail -n 20 | sed 's/^/    | /'; S_FAILED=1; return 1
}
# upcount LOG FROM REGEX
upcount() { uplog "$1" "$2" | grep -cE "$3"; }

# wait_no_fills : wait (up to 30 s) until berth runs no upstream download.
wait_no_fills() { local i; for i in $(seq 300); do [ "$(metric berth_upstream_fills_in_flight)" = 0 ] && return 0; sleep 0.1; done; return 1; }
# metric NAME{labels} : value of one series on berth's /metrics (0 if absent).
# metric NAME or NAME{l="v",...} : the sum of berth's series of NAME that carry every given label.
metric() { curl -s "http://$B/metrics" | awk -v k="$1" '
  BEGIN { name = k; sub(/\{.*/, "", name); n = 0
          if (match(k, /\{.*\}/)) n = split(substr(k, RSTART+1, RLENGTH-2), want, ",") }
  /^#/ { next }
  { m = $1; sub(/\{.*/, "", m); if (m != name) next
    for (i = 1; i <= n; i++) if (index($1, want[i]) == 0) next
    sum += $2 }
  END { printf "%.15g\n", sum + 0 }'; }

# Cleanup on exit: stop daemons (by PID, via lib.sh), unmount what they left under $RT.
e2e_cleanup() {
  [ "$E2E_DONE" = 1 ] || echo "e2e: stopped early after $(( $(date +%s) - T0 ))s; state and logs in $RT"
  stop_all
  local m
  for m in $(awk -v r="$RT/" 'index($2, r)==1 {print $2}' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
  done
  if [ "$E2E_OK" = 1 ] && [ "${BERTH_E2E_KEEP:-0}" != 1 ]; then rm -rf "$RT"; fi
}
trap e2e_cleanup EXIT
