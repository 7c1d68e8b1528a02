#!/usr/bin/env bash
# Real-client end-to-end test of berth (`make e2e`): dockerd, containerd/ctr,
# podman, skopeo, crane, regctl and oras pull and push through a real
# `berth serve` that fronts two distribution registries on loopback, one in the
# role of docker.io and one named registry.example.test. No internet needed.
# Scenarios are described in .ci/e2e/README.md. Each prints PASS, FAIL (with
# the client's own output) or SKIP; the script exits non-zero if any failed.
#
#   BERTH_E2E_REQUIRED=1   a client that cannot be installed or started is a
#                          FAILURE (default: SKIP with the reason)
#   BERTH_E2E_ONLY="docker skopeo"   run only these scenarios (names below)
#   BERTH_E2E_KEEP=1       keep $RT (logs, daemon state) after a passing run
#   RT=/path               state directory (default: a new /tmp/berth-test.*)
#
# Needs root for dockerd, containerd and podman (their scenarios SKIP otherwise).
. "$(dirname "$0")/lib.sh"
set +e   # scenarios report their own failures; -u and pipefail stay on
E2E=$ROOT/.ci/e2e
T0=$(date +%s)
. "$E2E/lib-e2e.sh"
REQUIRED=${BERTH_E2E_REQUIRED:-0}
GOBIN=$(go env GOPATH)/bin
echo "e2e: state and logs in $RT"

# --- tools -------------------------------------------------------------------

install_tools() {
  local missing=() c pkg
  for c in skopeo:skopeo podman:podman containerd:containerd ctr:containerd dockerd:docker.io \
           docker:docker.io runc:runc jq:jq curl:curl; do
    command -v "${c%%:*}" >/dev/null || missing+=("${c#*:}")
  done
  { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || missing+=(busybox-static)
  if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "e2e: apt-get install ${missing[*]}"
      export DEBIAN_FRONTEND=noninteractive
      [ -n "$(find /var/lib/apt/lists -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ] ||
        apt-get update -qq >"$RT/apt.log" 2>&1
      apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$RT/apt.log" 2>&1 ||
        echo "e2e: apt-get install failed (see $RT/apt.log); the clients it misses will SKIP or FAIL"
    else
      echo "e2e: missing ${missing[*]} and not root with apt-get: those clients will SKIP or FAIL"
    fi
  fi
  # Go-built tools, pinned; the .NAME.version markers are shared with .ci/install-tools.sh.
  go_tool registry github.com/distribution/distribution/v3/cmd/registry v3.1.2
  go_tool crane github.com/google/go-containerregistry/cmd/crane v0.22.1
  go_tool oras oras.land/oras/cmd/oras v1.3.6
  go_tool regctl github.com/regclient/regclient/cmd/regctl v0.11.7
}
go_tool() { local name=$1 pkg=$2 ver=$3 f="$GOBIN/.$1.version"
  if [ -x "$GOBIN/$name" ] && { [ ! -f "$f" ] || [ "$(cat "$f")" = "$ver" ]; }; then return 0; fi
  echo "e2e: go install $pkg@$ver"
  GOBIN=$GOBIN go install "$pkg@$ver" >>"$RT/go-install.log" 2>&1 && echo "$ver" >"$f" ||
    echo "e2e: go install $name failed (see $RT/go-install.log)"
}
install_tools
for t in registry crane jq curl; do
  command -v $t >/dev/null || { echo "e2e: FAIL: $t is required to set up the test and is missing"; exit 1; }
done
[ -x "$ROOT/bin/berth" ] || { echo "e2e: FAIL: $ROOT/bin/berth missing: make build"; exit 1; }

# --- upstreams, images, berth ------------------------------------------------

UP1_PORT=$(free_port); UP1=127.0.0.1:$UP1_PORT; UP1_LOG=$RT/up-docker.io.log
UP2_PORT=$(free_port); UP2=127.0.0.1:$UP2_PORT; UP2_LOG=$RT/up-example.log
DEAD=127.0.0.1:$(free_port)   # nothing listens here: clients' fallback to "the real registry" fails fast
start_upstream() { local name=$1 port=$2 cfg="$RT/$1.yml"
  mkdir -p "$RT/$name-data"
  cat >"$cfg" <<YML
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $RT/$name-data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  secret: berth-e2e
YML
  OTEL_TRACES_EXPORTER=none OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none OTEL_SDK_DISABLED=true \
    start_bg "$name" registry serve "$cfg"
  wait_http "http://127.0.0.1:$port/v2/" 30
}
start_upstream up-docker.io "$UP1_PORT" || { tail "$UP1_LOG"; exit 1; }
start_upstream up-example "$UP2_PORT" || { tail "$UP2_LOG"; exit 1; }
declare -A DIG
build_images() { local reg=$1 key=$2 origin=$3 t d
  "$ROOT/.ci/make-image.sh" "$reg" library/busybox "$origin" >"$RT/images-$key.txt" 2>&1 ||
    { echo "e2e: FAIL: building test images in $reg:"; cat "$RT/images-$key.txt"; exit 1; }
  while read -r t d; do DIG[$key:$t]=$d; done <"$RT/images-$key.txt"
}
build_images "$UP1" d docker.io
build_images "$UP2" x registry.example.test
echo "e2e: upstream docker.io            http://$UP1  library/busybox latest=${DIG[d:latest]:7:12} oci=${DIG[d:oci]:7:12} multi=${DIG[d:multi]:7:12}"
echo "e2e: upstream registry.example.test http://$UP2  library/busybox latest=${DIG[x:latest]:7:12} oci=${DIG[x:oci]:7:12} multi=${DIG[x:multi]:7:12}"

BERTH_PORT=$(free_port); B=127.0.0.1:$BERTH_PORT; BLOG=$RT/berth.log
TAG_TTL=3s
cat >"$RT/berth.yaml" <<YML
upstreams:
  - name: docker.io
    url: http://$UP1
    default: true
    tag_ttl: $TAG_TTL
  - name: registry.example.test
    url: http://$UP2
    tag_ttl: $TAG_TTL
local: ["team/**"]
YML
start_bg berth "$ROOT/bin/berth" serve --config "$RT/berth.yaml" --addr "$B" --data "$RT/berth-data" --log-format json
wait_http "http://$B/v2/" 30 || { echo "e2e: FAIL: berth did not start"; tail -20 "$BLOG"; exit 1; }
echo "e2e: berth $("$ROOT/bin/berth" version | awk '{print $2}') on http://$B (log $BLOG)"
BERTH_PID=$(cat "$RT/berth.pid")

# Client configuration comes from the deploy/ snippets, with berth's address,
# the test upstream names and a dead "real registry" substituted.
DEPLOY=$ROOT/deploy
render() { sed -e "s#127\.0\.0\.1:5000#$B#g" "$@"; }

# --- scenarios -----------------------------------------------------------------
. "$E2E/scenarios.sh"

SCENARIOS=(config docker containerd podman skopeo crane oras upstream-down berth-log)
for s in "${SCENARIOS[@]}"; do
  if [ -n "${BERTH_E2E_ONLY:-}" ] && [[ " $BERTH_E2E_ONLY " != *" $s "* ]] && [ "$s" != berth-log ]; then continue; fi
  scenario "$s" "sc_${s//-/_}"
done

# --- summary -------------------------------------------------------------------
echo
echo "e2e summary:"
nfail=0
for r in "${RESULTS[@]}"; do echo "  $r"; [[ $r == FAIL* ]] && nfail=$((nfail+1)); done
echo "e2e: total time $(( $(date +%s) - T0 ))s; state and logs in $RT"; E2E_DONE=1
if [ "$nfail" -gt 0 ]; then echo "e2e: $nfail scenario(s) FAILED"; exit 1; fi
echo "e2e: all scenarios passed or skipped"
E2E_OK=1
