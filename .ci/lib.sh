# Shared helpers for berth's test scripts. Everything binds 127.0.0.1, keeps
# its state under $RT, and is stopped by its recorded PID.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$(go env GOPATH)/bin:$PATH"
RT=${RT:-$(mktemp -d /tmp/berth-test.XXXXXX)}
mkdir -p "$RT"
PIDS=()

# start_bg NAME CMD... : run CMD in the background, log to $RT/NAME.log.
start_bg() { local n=$1; shift; setsid "$@" >"$RT/$n.log" 2>&1 </dev/null & local p=$!; echo "$p" >"$RT/$n.pid"; PIDS+=("$p"); }
# stop_bg NAME : stop the process started as NAME (its process group).
stop_bg() { local f="$RT/$1.pid" p; [ -f "$f" ] || return 0; p=$(cat "$f"); rm -f "$f"
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$p" 2>/dev/null || true; }
stop_all() { for f in "$RT"/*.pid; do [ -e "$f" ] && stop_bg "$(basename "$f" .pid)"; done; return 0; }
trap stop_all EXIT
# free_port : a TCP port nobody listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_http URL [secs]
wait_http() { local u=$1 s=${2:-30}; for _ in $(seq $((s*10))); do curl -s -o /dev/null "$u" && return 0; sleep 0.1; done
  echo "timeout waiting for $u" >&2; return 1; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# start_distribution NAME PORT : distribution's registry (the registry:2 code) on
# 127.0.0.1:PORT with filesystem storage under $RT/NAME-data; access log in $RT/NAME.log.
start_distribution() { local n=$1 port=$2 cfg="$RT/$1-config.yml"; mkdir -p "$RT/$n-data"
  cat >"$cfg" <<YML
version: 0.1
log: {level: info, formatter: text}
storage:
  filesystem: {rootdirectory: $RT/$n-data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$port, debug: {addr: ""}}
YML
  OTEL_SDK_DISABLED=true OTEL_TRACES_EXPORTER=none OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
    start_bg "$n" registry serve "$cfg"
  wait_http "http://127.0.0.1:$port/v2/"; }
# start_berth NAME PORT CONFIG : bin/berth on 127.0.0.1:PORT with data in $RT/NAME-data.
start_berth() { start_bg "$1" "$ROOT/bin/berth" serve --config "$3" --addr "127.0.0.1:$2" --data "$RT/$1-data" --log-format json
  wait_http "http://127.0.0.1:$2/v2/"; }
# count_log FILE REGEX : how many lines of FILE match REGEX.
count_log() { grep -cE "$2" "$1" || true; }
