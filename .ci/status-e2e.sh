#!/usr/bin/env bash
# The status page in a real browser (`make status-e2e`): a real `berth serve`
# in front of distribution's registry (as docker.io, with credentials
# configured) and a dead upstream; pushes and pulls with curl; then headless
# Chromium from Debian loads http://berth/ : the DOM must show the version, the
# busiest repository, the upstreams and their state, and never the upstreams'
# URLs or credentials; a screenshot is kept as a test artifact.
#
#   BERTH_E2E_REQUIRED=1   no Chromium (cannot install, cannot start) is a
#                          FAILURE (default: SKIP with the reason)
#   BERTH_ARTIFACTS=dir    where status.png and status.html go
#                          (default: $RT/artifacts)
#   RT=/path               state directory (default: a new /tmp/berth-test.*)
. "$(dirname "$0")/lib.sh"
REQUIRED=${BERTH_E2E_REQUIRED:-0}
ART=${BERTH_ARTIFACTS:-$RT/artifacts}
mkdir -p "$ART"
skip() { [ "$REQUIRED" = 1 ] && fail "status-e2e: $*"; echo "status-e2e: SKIP: $*"; exit 0; }

# --- Chromium ------------------------------------------------------------------
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "status-e2e: apt-get install chromium"
    export DEBIAN_FRONTEND=noninteractive
    [ -n "$(find /var/lib/apt/lists -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ] ||
      apt-get update -qq >"$RT/apt.log" 2>&1
    apt-get install -y -q --no-install-recommends chromium >>"$RT/apt.log" 2>&1 ||
      skip "apt-get install chromium failed (see $RT/apt.log)"
    CHROMIUM=$(command -v chromium) || skip "chromium installed but not on PATH"
  else
    skip "chromium is missing and this is not root with apt-get to install it"
  fi
fi
for t in registry curl python3 sha256sum; do
  command -v $t >/dev/null || fail "status-e2e: $t is required to set up the test (make tools installs registry)"
done
[ -x "$ROOT/bin/berth" ] || fail "status-e2e: $ROOT/bin/berth missing: make build"
# chromium ARGS... : headless, with its profile under $RT and a deadline.
chromium() { timeout 90 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
  --no-first-run --user-data-dir="$RT/chromium-profile" "$@" 2>>"$RT/chromium.log"; }
chromium --version >/dev/null 2>&1 || skip "$CHROMIUM does not start: $(tail -3 "$RT/chromium.log")"
echo "status-e2e: $("$CHROMIUM" --version 2>/dev/null)"

# --- an upstream, a dead one, berth ----------------------------------------------
UP_PORT=$(free_port); UP=127.0.0.1:$UP_PORT
DEAD_PORT=$(free_port) # nothing listens here
BERTH_PORT=$(free_port); B=127.0.0.1:$BERTH_PORT
SECRET_USER=status-e2e-robot
SECRET_PW=s3cret-status-e2e-$$
start_distribution upstream "$UP_PORT"

# push_blob REG REPO FILE : a monolithic upload (POST, then PUT with the digest).
push_blob() { local reg=$1 repo=$2 f=$3 dg loc sep
  dg=sha256:$(sha256sum "$f" | cut -d' ' -f1)
  loc=$(curl -fsS -X POST -D - -o /dev/null "http://$reg/v2/$repo/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  [ -n "$loc" ] || fail "status-e2e: no upload Location from $reg for $repo"
  case $loc in http*) ;; *) loc=http://$reg$loc ;; esac
  sep='?'; [[ $loc == *\?* ]] && sep='&'
  curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$f" "$loc${sep}digest=$dg" ||
    fail "status-e2e: blob upload to $reg/$repo"
  echo "$dg"; }
# push_image REG REPO TAG : a one-layer OCI image; prints its layer digest.
push_image() { local reg=$1 repo=$2 tag=$3 d=$RT/img-$RANDOM cfg layer
  mkdir -p "$d"; printf '{}' >"$d/config"; head -c 200000 /dev/urandom >"$d/layer"
  cfg=$(push_blob "$reg" "$repo" "$d/config"); layer=$(push_blob "$reg" "$repo" "$d/layer")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":200000}]}' \
    "$cfg" "$layer" >"$d/manifest"
  curl -fsS -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @"$d/manifest" \
    "http://$reg/v2/$repo/manifests/$tag" || fail "status-e2e: manifest push to $reg/$repo:$tag"
  echo "$layer"; }
# pull REPO TAG LAYER : the manifest and the layer through berth.
pull() { curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$B/v2/$1/manifests/$2" &&
  curl -fsS -o /dev/null "http://$B/v2/$1/blobs/$3" || fail "status-e2e: pull of $1:$2 through berth"; }

up_layer=$(push_image "$UP" library/busybox latest)
cat >"$RT/berth.yaml" <<YML
upstreams:
  - name: docker.io
    url: http://$UP
    default: true
    tag_ttl: 1h
    username: $SECRET_USER
    password: $SECRET_PW
  - name: registry.example.test
    url: http://127.0.0.1:$DEAD_PORT
    username: $SECRET_USER
    password: $SECRET_PW
local: ["team/**"]
max_cache_bytes: 1GiB
YML
start_berth berth "$BERTH_PORT" "$RT/berth.yaml" || { tail -20 "$RT/berth.log"; fail "status-e2e: berth did not start"; }
VERSION=$("$ROOT/bin/berth" version | awk '{print $2}')
echo "status-e2e: berth $VERSION on http://$B (log $RT/berth.log)"

# --- traffic ---------------------------------------------------------------------
local_layer=$(push_image "$B" team/app 1)
for _ in 1 2 3; do pull team/app 1 "$local_layer"; done
pull library/busybox latest "$up_layer" # misses: filled from the upstream
pull library/busybox latest "$up_layer" # hits
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$B/v2/registry.example.test/org/tool/manifests/1")
# Not cached and the upstream unreachable: berth answers 503 (UNAVAILABLE).
[ "$code" = 503 ] || fail "status-e2e: a pull through the dead upstream answered $code, want 503"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$B/")
[ "$code" = 200 ] || fail "status-e2e: GET / answered $code"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$B/no-such-page")
[ "$code" = 404 ] || fail "status-e2e: GET /no-such-page answered $code, want 404"

# --- the browser -------------------------------------------------------------------
DOM=$ART/status.html PNG=$ART/status.png
rm -f "$DOM" "$PNG"
chromium --dump-dom "http://$B/" >"$DOM" || fail "status-e2e: chromium --dump-dom failed: $(tail -5 "$RT/chromium.log")"
echo "status-e2e: DOM as Chromium built it: $DOM ($(wc -c <"$DOM") bytes)"
nfail=0
check() { if grep -qF -- "$2" "$DOM"; then echo "  ok   $1"; else echo "  FAIL $1: no $2"; nfail=$((nfail+1)); fi; }
refuse() { if grep -qF -- "$2" "$DOM"; then echo "  FAIL $1: $2 is on the page"; nfail=$((nfail+1)); else echo "  ok   $1"; fi; }
check "version" "<strong id=\"version\">$VERSION</strong>"
check "team/app among the busiest repositories" '<td class="repo">team/app</td><td>local</td>'
check "library/busybox among the busiest repositories" '<td class="repo">library/busybox</td><td>docker.io</td>'
check "upstream docker.io is ok" '<td class="upstream">docker.io</td><td><span class="state state-ok">ok</span>'
check "upstream registry.example.test is failing" '<td class="upstream">registry.example.test</td><td><span class="state state-failing">failing</span>'
check "its last error is a connection failure" '<td>connection on '
check "disk usage" 'id="disk-used"'
check "the disk limit" '<strong id="disk-limit">1.0 GiB</strong>'
if grep -q 'id="hit-ratio">–<' "$DOM"; then echo "  FAIL hit ratio: none after mirrored pulls"; nfail=$((nfail+1)); else echo "  ok   hit ratio $(grep -o 'id="hit-ratio">[^<]*' "$DOM" | cut -d'>' -f2)"; fi
refuse "no password" "$SECRET_PW"
refuse "no user name" "$SECRET_USER"
refuse "no upstream URL" "$UP"
refuse "no dead upstream URL" "127.0.0.1:$DEAD_PORT"
refuse "no script" "<script"

chromium --screenshot="$PNG" --window-size=1280,1600 --hide-scrollbars "http://$B/" >/dev/null ||
  fail "status-e2e: chromium --screenshot failed: $(tail -5 "$RT/chromium.log")"
png=$(python3 - "$PNG" <<'PY'
import struct, sys
b = open(sys.argv[1], 'rb').read()
ok = b[:8] == b'\x89PNG\r\n\x1a\n' and b[12:16] == b'IHDR'
w, h = struct.unpack('>II', b[16:24]) if ok else (0, 0)
print(('png' if ok else 'not-png'), w, h, len(b))
PY
) || png="not-png 0 0 0"
read -r kind w h size <<<"$png"
if [ "$kind" = png ] && [ "$size" -gt 1000 ] && [ "$w" = 1280 ] && [ "$h" = 1600 ]; then
  echo "  ok   screenshot ${w}x${h}, $size bytes"
else
  echo "  FAIL screenshot: $png"; nfail=$((nfail+1))
fi
echo "status-e2e: screenshot: $PNG"
[ "$nfail" = 0 ] || fail "status-e2e: $nfail check(s) failed; page in $DOM, berth log $RT/berth.log"
echo "status-e2e: PASS"
