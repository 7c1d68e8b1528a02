#!/usr/bin/env bash
# Air-gapped build farms end to end (`make airgap-e2e`): the bundle workflow of
# `berth warm`, `berth export` and `berth import` with real processes and
# real clients, on one machine, with no internet access.
#
#   connected side     distribution's registry (the upstream, as docker.io) with
#                      a Docker v2 image, an OCI image, a two-platform index and
#                      an SBOM attached with `oras attach`; berth A in front of it;
#                      `berth warm` through A; `berth export` to bundle.tar.
#   the gap            the upstream is stopped.
#   disconnected side  berth B, offline, its upstream a dead port, an empty data
#                      directory: a tampered and a truncated bundle are refused
#                      and leave nothing; `berth import` of the bundle; then
#                      dockerd (registry-mirrors), ctr (deploy/'s hosts.toml,
#                      all platforms), crane and oras pull through B with the
#                      upstream's digests; skopeo reads the bundle itself.
#   incremental        one more image through A; `export --since` (the bundle,
#                      or its .digests sidecar) holds only its new blobs; it
#                      imports into B, and is refused by a fresh berth C (with
#                      client authentication) naming the missing base.
#   stopped berth      `berth import --data DIR` of an `export --all` bundle
#                      (local and mirrored names), then served; refused while
#                      a server holds DIR.
#
# Each scenario prints PASS, FAIL (with the command's own output) or SKIP; the
# script exits non-zero if any failed.
#
#   BERTH_E2E_REQUIRED=1   a client that cannot be installed or started
#                          (dockerd, containerd, skopeo) is a FAILURE
#                          (default: SKIP with the reason)
#   BERTH_E2E_KEEP=1       keep all of $RT after a passing run (by default only
#                          the logs and summary.txt are kept; a failing run
#                          keeps everything)
#   RT=/path               state directory (default: a new /tmp/berth-test.*)
#
# dockerd and containerd need root (they SKIP otherwise).
. "$(dirname "$0")/lib.sh"
set +e   # scenarios report their own failures; -u and pipefail stay on
E2E=$ROOT/.ci/e2e
T0=$(date +%s)
. "$E2E/lib-e2e.sh"
REQUIRED=${BERTH_E2E_REQUIRED:-0}
BERTH=$ROOT/bin/berth
DEPLOY=$ROOT/deploy
W=$RT/work; mkdir -p "$W"
echo "airgap-e2e: state and logs in $RT"

# --- tools -------------------------------------------------------------------------

install_packages() {
  local missing=() c
  for c in skopeo:skopeo containerd:containerd ctr:containerd dockerd:docker.io docker:docker.io runc:runc \
           jq:jq curl:curl python3:python3; do
    command -v "${c%%:*}" >/dev/null || missing+=("${c#*:}")
  done
  { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || missing+=(busybox-static)
  [ ${#missing[@]} -gt 0 ] || return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "airgap-e2e: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    [ -n "$(find /var/lib/apt/lists -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ] ||
      apt-get update -qq >"$RT/apt.log" 2>&1
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$RT/apt.log" 2>&1 ||
      echo "airgap-e2e: apt-get install failed (see $RT/apt.log); what it misses will SKIP or FAIL"
  else
    echo "airgap-e2e: missing ${missing[*]} and not root with apt-get: those checks will SKIP or FAIL"
  fi
}
install_packages
for t in registry crane oras; do
  command -v $t >/dev/null || { echo "airgap-e2e: installing the Go tools (.ci/install-tools.sh)"
    bash "$ROOT/.ci/install-tools.sh" >"$RT/install-tools.log" 2>&1; break; }
done
for t in registry crane oras jq curl python3; do
  command -v $t >/dev/null || { echo "airgap-e2e: FAIL: $t is required to set up the test and is missing (make tools)"; exit 1; }
done
[ -x "$BERTH" ] || { echo "airgap-e2e: FAIL: $BERTH missing: make build"; exit 1; }
for c in warm export import; do
  "$BERTH" help 2>&1 | grep -qw "$c" || "$BERTH" "$c" --help >/dev/null 2>&1 ||
    echo "airgap-e2e: warning: \`berth $c\` does not look like a command of this build"
done

# Keep the logs of a passing run, not its daemons' state.
airgap_cleanup() {
  local ok=$E2E_OK
  E2E_OK=0; e2e_cleanup   # stops every process, unmounts; keeps $RT
  if [ "$ok" = 1 ] && [ "${BERTH_E2E_KEEP:-0}" != 1 ]; then
    find "$RT" -mindepth 1 -maxdepth 1 ! -name '*.log' ! -name summary.txt -exec rm -rf {} + 2>/dev/null
    echo "airgap-e2e: logs kept in $RT"
  fi
}
trap airgap_cleanup EXIT

# --- helpers -------------------------------------------------------------------------

# bundle CMD FILE... : facts about an OCI layout tar, read with python3's tarfile.
#   blobs FILE       "digest size" of every blobs/<alg>/<hex> entry, sorted
#   verify FILE      every blob's content hashes to its name; prints "ok N" or the bad ones
#   refs FILE        index.json's org.opencontainers.image.ref.name values, sorted
#   layout FILE      "ok" if oci-layout and index.json are there
#   flip IN OUT      copy IN to OUT with one byte of its largest blob flipped; prints that digest
bundle() { python3 - "$@" <<'PY'
import hashlib, json, shutil, sys, tarfile
cmd, path = sys.argv[1], sys.argv[2]
def name(m): return m.name[2:] if m.name.startswith('./') else m.name
with tarfile.open(path, 'r:') as t:
    members = [m for m in t.getmembers() if m.isfile()]
    blobs = [m for m in members if name(m).startswith('blobs/') and name(m).count('/') == 2]
    if cmd == 'blobs':
        for d, s in sorted((name(m)[6:].replace('/', ':'), m.size) for m in blobs): print(d, s)
    elif cmd == 'verify':
        bad = []
        for m in blobs:
            alg, hexd = name(m).split('/')[1:]
            h = hashlib.new(alg); f = t.extractfile(m)
            for chunk in iter(lambda: f.read(1 << 20), b''): h.update(chunk)
            if h.hexdigest() != hexd: bad.append(name(m))
        print('bad ' + ' '.join(bad) if bad else 'ok %d' % len(blobs))
    elif cmd == 'refs':
        idx = json.load(t.extractfile(next(m for m in members if name(m) == 'index.json')))
        for r in sorted(m.get('annotations', {}).get('org.opencontainers.image.ref.name', '') for m in idx.get('manifests', [])):
            print(r)
    elif cmd == 'layout':
        names = {name(m) for m in members}
        print('ok' if {'oci-layout', 'index.json'} <= names else 'missing: ' + ' '.join(sorted({'oci-layout', 'index.json'} - names)))
    elif cmd == 'flip':
        m = max(blobs, key=lambda m: m.size)
        shutil.copyfile(path, sys.argv[3])
        with open(sys.argv[3], 'r+b') as f:
            f.seek(m.offset_data + m.size // 2); b = f.read(1)
            f.seek(m.offset_data + m.size // 2); f.write(bytes([b[0] ^ 0xff]))
        print(name(m)[6:].replace('/', ':'))
PY
}
# state URL DATA : what a berth shows of itself: its catalog and the bytes under its blobs directory.
state() { local cat du
  cat=$(curl -s "$1/v2/_catalog?n=1000" | jq -c '.repositories // []' 2>/dev/null)
  du=$( [ -d "$2/blobs" ] && du -sb "$2/blobs" | cut -f1 || echo 0)
  echo "catalog=$cat blobs_bytes=$du"; }
# bstart NAME CONFIG : berth NAME (data in $RT/NAME-data, log $RT/NAME.log) on a
# free port; its address goes into ADDR_<NAME with _ for ->.
bstart() { local n=$1 port; port=$(free_port)
  start_berth "$n" "$port" "$2" || { echo "  berth $n did not start:"; tail -n 20 "$RT/$n.log" | sed 's/^/    | /'; return 1; }
  printf -v "ADDR_${n//-/_}" '%s' "127.0.0.1:$port"; }
# use_berth NAME : the berth a scenario is about (scenario() checks it runs; bexpect reads its log).
use_berth() { BERTH_PID=$(cat "$RT/$1.pid" 2>/dev/null || echo 0); BLOG=$RT/$1.log; }
have_bundle() { [ -s "$BUNDLE" ] || { echo "  FAIL no bundle: the export scenario did not write $BUNDLE"; S_FAILED=1; return 1; }; }
# digests_in FILE : the sha256 digests a command's output names.
digests_in() { grep -oE 'sha256:[0-9a-f]{64}' "$1" | sort -u; }

# --- the connected side: upstream, images, berth A ------------------------------------------

UP_PORT=$(free_port); UP=127.0.0.1:$UP_PORT; UP_LOG=$RT/upstream.log
DEAD=127.0.0.1:$(free_port)   # nothing listens here
start_distribution upstream "$UP_PORT" || { echo "airgap-e2e: FAIL: the upstream did not start"; tail "$UP_LOG"; exit 1; }
declare -A DIG
"$ROOT/.ci/make-image.sh" "$UP" library/busybox docker.io >"$RT/images.log" 2>&1 ||
  { echo "airgap-e2e: FAIL: building the test images:"; cat "$RT/images.log"; exit 1; }
while read -r t d; do DIG[$t]=$d; done <"$RT/images.log"
DIG[oci-arm64]=$(crane --insecure digest "$UP/library/busybox:oci-arm64")
SBOM_TYPE=application/spdx+json
printf '{"spdxVersion":"SPDX-2.3","name":"busybox","run":"%s"}\n' "$$" >"$W/sbom.spdx.json"
(cd "$W" && oras attach --plain-http --artifact-type "$SBOM_TYPE" "$UP/library/busybox:oci" \
  "sbom.spdx.json:$SBOM_TYPE" >"$RT/oras-attach.log" 2>&1) ||
  { echo "airgap-e2e: FAIL: oras attach at the upstream:"; cat "$RT/oras-attach.log"; exit 1; }
DIG[sbom]=$(oras discover --plain-http --format json "$UP/library/busybox:oci" 2>>"$RT/oras-attach.log" |
  jq -r --arg t "$SBOM_TYPE" '[.. | objects | select(.artifactType? == $t) | .digest] | first // empty')
[ -n "${DIG[sbom]}" ] || { echo "airgap-e2e: FAIL: oras discover at the upstream found no SBOM"; exit 1; }
echo "airgap-e2e: upstream http://$UP library/busybox latest=${DIG[latest]:7:12} (docker v2) oci=${DIG[oci]:7:12}" \
  "multi=${DIG[multi]:7:12} (index) sbom=${DIG[sbom]:7:12} (subject: oci)"

cat >"$RT/berth-a.yaml" <<YML
upstreams:
  - name: docker.io
    url: http://$UP
    default: true
    tag_ttl: 1h
local: ["team/**"]
YML
# The disconnected side: the same upstream name, at a dead port, and offline.
cat >"$RT/berth-offline.yaml" <<YML
upstreams:
  - name: docker.io
    url: http://$DEAD
    default: true
    tag_ttl: 1h
local: ["team/**"]
offline: true
YML
bstart berth-a "$RT/berth-a.yaml" || { echo "airgap-e2e: FAIL: berth A did not start"; exit 1; }
A=$ADDR_berth_a
echo "airgap-e2e: berth $("$BERTH" version | awk '{print $2}'): A (online) on http://$A"
BUNDLE=$W/bundle.tar
IMAGES=(busybox busybox:oci busybox:multi)
REFS=(docker.io/library/busybox:latest docker.io/library/busybox:multi docker.io/library/busybox:oci)

# Client configuration for B, as make e2e does it: deploy/'s files with berth's
# address, and a dead "real registry" so that nothing bypasses berth.
render() { sed -e "s#127\.0\.0\.1:5000#$B#g" "$@"; }
. "$E2E/scenarios.sh"   # start_dockerd, start_containerd, DK, CTR

# --- scenarios -----------------------------------------------------------------------------

sc_warm() {
  use_berth berth-a
  local u; u=$(mark "$UP_LOG")
  step "berth warm --server http://$A --all-platforms ${IMAGES[*]}" \
    "$BERTH" warm --server "http://$A" --all-platforms "${IMAGES[@]}" || return
  upexpect "the upstream served busybox's blobs to A" "$UP_LOG" "$u" "^GET /v2/library/busybox/blobs/sha256:[0-9a-f]+ 200"
  upexpect "the upstream served the arm64 manifest (all platforms)" "$UP_LOG" "$u" "^GET /v2/library/busybox/manifests/${DIG[oci-arm64]} 200"
  u=$(mark "$UP_LOG")
  step "berth warm again (idempotent)" "$BERTH" warm --server "http://$A" --all-platforms "${IMAGES[@]}" || return
  check "the second warm fetched no blob from the upstream" '[ "$(upcount "$UP_LOG" "$u" "^GET /v2/[^ ]*/blobs/")" = 0 ]' \
    "$(uplog "$UP_LOG" "$u")"
  step_fails "berth warm of a missing image exits non-zero, naming it" 'nosuch' \
    "$BERTH" warm --server "http://$A" busybox library/nosuch:1
}

sc_export() {
  use_berth berth-a
  rm -f "$BUNDLE" "$BUNDLE.digests"
  step "berth export --server http://$A --out bundle.tar ${IMAGES[*]}" \
    "$BERTH" export --server "http://$A" --out "$BUNDLE" "${IMAGES[@]}" || return
  equal "the bundle is an OCI image layout (oci-layout, index.json)" "$(bundle layout "$BUNDLE" 2>&1)" ok
  check "every blob in the bundle matches its digest" '[[ "$(bundle verify "$BUNDLE" 2>&1)" == ok* ]]' "$(bundle verify "$BUNDLE" 2>&1)"
  bundle blobs "$BUNDLE" >"$W/bundle.blobs"
  echo "  bundle: $(stat -c %s "$BUNDLE") bytes, $(wc -l <"$W/bundle.blobs") blobs"
  equal "index.json names each image by its full reference (ref.name)" \
    "$(bundle refs "$BUNDLE" 2>&1 | grep -E '^docker.io/library/busybox:' | paste -sd' ')" "${REFS[*]}"
  local d missing=""
  for d in "${DIG[latest]}" "${DIG[oci]}" "${DIG[multi]}" "${DIG[oci-arm64]}"; do
    grep -q "^$d " "$W/bundle.blobs" || missing+=" $d"
  done
  check "the bundle holds every manifest, both platforms of the index included" '[ -z "$missing" ]' "missing:$missing"
  check "the SBOM (referrer of busybox:oci) travelled with it" 'grep -q "^${DIG[sbom]} " "$W/bundle.blobs"' "$(cat "$W/bundle.blobs")"
  check "export wrote the sidecar bundle.tar.digests" '[ -s "$BUNDLE.digests" ]' "$(ls -l "$W")"
  if command -v skopeo >/dev/null; then
    # (skopeo looks up a name only among index.json's entries with OCI media
    # types: the Docker v2 image, kept byte for byte, is not one of them.)
    step "skopeo inspect oci-archive:bundle.tar:docker.io/library/busybox:oci" \
      "${SK[@]}" inspect "oci-archive:$BUNDLE:docker.io/library/busybox:oci" &&
      equal "skopeo reads upstream's digest from the bundle" "$(jq -r .Digest "$OUT")" "${DIG[oci]}"
    step "skopeo inspect --raw oci-archive:bundle.tar:docker.io/library/busybox:multi" \
      "${SK[@]}" inspect --raw "oci-archive:$BUNDLE:docker.io/library/busybox:multi" &&
      equal "the index in the bundle keeps both platforms" \
        "$(jq -r '[.manifests[].platform.architecture]|sort|join(",")' "$OUT")" "amd64,arm64"
  elif [ "$REQUIRED" = 1 ]; then echo "  FAIL skopeo is not installed (BERTH_E2E_REQUIRED=1)"; S_FAILED=1
  else echo "  skip: skopeo is not installed: the bundle is not read with skopeo"; fi
}

sc_gap() {
  stop_bg upstream
  check "the upstream is stopped" '! curl -s -o /dev/null "http://$UP/v2/"'
  check "berth B has no way to it (offline, its upstream a dead port)" '! curl -s -o /dev/null "http://$DEAD/v2/"'
}

sc_tamper() {
  have_bundle || return
  use_berth berth-b
  local before bad
  before=$(state "http://$B" "$RT/berth-b-data")
  echo "  berth B before: $before"
  bad=$(bundle flip "$BUNDLE" "$W/tampered.tar")
  echo "  tampered.tar: one byte flipped in blob $bad"
  step_fails "import of the tampered bundle is refused, naming the bad blob" "$bad" \
    "$BERTH" import --server "http://$B" "$W/tampered.tar"
  equal "B's catalog and blob bytes unchanged" "$(state "http://$B" "$RT/berth-b-data")" "$before"
  head -c $(( $(stat -c %s "$BUNDLE") * 2 / 3 )) "$BUNDLE" >"$W/truncated.tar"
  step_fails "import of a truncated bundle is refused" 'truncat|unexpected (EOF|end)|incomplete|short|missing' \
    "$BERTH" import --server "http://$B" "$W/truncated.tar"
  equal "B's catalog and blob bytes unchanged" "$(state "http://$B" "$RT/berth-b-data")" "$before"
}

sc_import() {
  have_bundle || return
  use_berth berth-b
  local m; m=$(mark "$BLOG")
  step "berth import --server http://$B bundle.tar" "$BERTH" import --server "http://$B" "$BUNDLE" || return
  bsync
  local said; said=$(tail -n +$((m + 1)) "$BLOG" | jq -Rc 'fromjson? | select(.message=="bundle imported")')
  check "B itself imported it (its log: bundle imported)" '[ -n "$said" ]' "$(tail -n +$((m + 1)) "$BLOG" | tail -n 5)"
  local after; after=$(state "http://$B" "$RT/berth-b-data")
  echo "  berth B after: $after"
  check "B's catalog lists docker.io/library/busybox" '[[ "$after" == *library/busybox* ]]' "$after"
  step "the same bundle again, through a pipe (cat bundle.tar | berth import -)" \
    bash -c 'cat "$1" | "$2" import --server "$3" -' _ "$BUNDLE" "$BERTH" "http://$B"
  equal "importing it twice changed nothing" "$(state "http://$B" "$RT/berth-b-data")" "$after"
}

sc_crane() {
  use_berth berth-b
  local t
  for t in latest oci multi; do
    step "crane digest $B/busybox:$t" crane --insecure digest "$B/busybox:$t" &&
      equal "  = the upstream's $t" "$(cat "$OUT")" "${DIG[$t]}"
  done
  step "crane manifest $B/busybox@<arm64 manifest> (the index's other platform)" \
    crane --insecure manifest "$B/busybox@${DIG[oci-arm64]}" &&
    equal "  its architecture" "$(jq -r .config.digest "$OUT" | xargs -I{} crane --insecure blob "$B/library/busybox@{}" 2>&1 | jq -r .architecture)" arm64
  step "crane pull $B/busybox:latest" crane --insecure pull "$B/busybox:latest" "$W/pulled.tar"
  step_fails "B is offline: an image that was not imported is unknown" 'unknown|not found|404' \
    crane --insecure digest "$B/library/nosuch:1"
  step_fails "imported mirror content stays read-only to clients" 'denied|unsupported|40[35]' \
    crane --insecure tag "$B/library/busybox:latest" pushed
}

sc_oras() {
  use_berth berth-b
  local m; m=$(mark "$BLOG")
  step "oras discover $B/library/busybox:oci" oras discover --plain-http --format json "$B/library/busybox:oci" || return
  equal "it finds the SBOM attached at the upstream" \
    "$(jq -r --arg t "$SBOM_TYPE" '[.. | objects | select(.artifactType? == $t) | .digest] | first // empty' "$OUT")" "${DIG[sbom]}"
  bexpect "oras used B's referrers API" "$m" '.kind=="referrers" and .status==200'
  rm -rf "$W/sbom-pull"; mkdir -p "$W/sbom-pull"
  step "oras pull the SBOM by digest" bash -c 'cd "$1" && oras pull --plain-http "$2"' _ "$W/sbom-pull" "$B/library/busybox@${DIG[sbom]}" &&
    check "the SBOM round-trips" 'cmp -s "$W/sbom.spdx.json" "$W/sbom-pull/sbom.spdx.json"'
}

sc_containerd() {
  use_berth berth-b
  need_root containerd && need containerd ctr || return
  start_containerd "$CX/root" || { unavailable "containerd did not start (log $RT/containerd.log)"; return; }
  echo "  containerd $(containerd --version | awk '{print $3}'), hosts.toml from deploy/containerd/certs.d (server: a dead port)"
  local m; m=$(mark "$BLOG")
  step "ctr pull --all-platforms docker.io/library/busybox:multi" "${CTR[@]}" images pull --snapshotter native \
    --hosts-dir "$CX/certs.d" --all-platforms docker.io/library/busybox:multi || return
  equal "containerd's image is the upstream's index" \
    "$("${CTR[@]}" images ls 2>&1 | awk '$1=="docker.io/library/busybox:multi" {print $3}')" "${DIG[multi]}"
  local content; content=$("${CTR[@]}" content ls 2>&1)
  check "both platforms' manifests were pulled" \
    'grep -q "${DIG[oci]}" <<<"$content" && grep -q "${DIG[oci-arm64]}" <<<"$content"' "$content"
  bexpect "ctr's requests reached B (?ns=docker.io) and were answered" "$m" '.kind=="manifest" and .route=="docker.io" and .status==200'
}

sc_docker() {
  use_berth berth-b
  need_root dockerd && need dockerd docker runc || return
  start_dockerd || { unavailable "dockerd did not start (log $RT/dockerd.log)"; return; }
  echo "  dockerd $(dockerd --version | awk '{print $3}' | tr -d ,), registry-mirrors http://$B (deploy/docker/daemon.json)"
  local m; m=$(mark "$BLOG")
  step "docker pull busybox" "${DK[@]}" pull busybox || return
  bexpect "dockerd pulled through B" "$m" '.kind=="blob" and .repo=="library/busybox" and .status==200'
  equal "pulled digest is the upstream's" \
    "$("${DK[@]}" image inspect busybox --format '{{index .RepoDigests 0}}' 2>&1)" "busybox@${DIG[latest]}"
  step "docker run --rm --network=none busybox" "${DK[@]}" run --rm --network=none busybox cat /etc/berth-e2e-origin &&
    equal "container output" "$(cat "$OUT")" docker.io
}

sc_incremental() {
  have_bundle || return
  use_berth berth-a
  # One more image at the upstream, on top of busybox:latest: it shares that
  # layer with the first bundle and brings a layer, a config and a manifest.
  stop_bg upstream   # (stopped already, unless the gap scenario failed)
  start_distribution upstream "$UP_PORT" >/dev/null 2>&1 || { echo "  FAIL the upstream did not restart"; S_FAILED=1; return; }
  mkdir -p "$W/app"; head -c 65536 /dev/urandom >"$W/app/data"; tar -C "$W/app" -cf "$W/app.tar" data
  step "crane append a layer to busybox:latest -> upstream library/app:2" \
    crane --insecure append -b "$UP/library/busybox:latest" -f "$W/app.tar" -t "$UP/library/app:2" || return
  DIG[app]=$(crane --insecure digest "$UP/library/app:2")
  crane --insecure manifest "$UP/library/app:2" | jq -r '.config.digest, .layers[].digest' >"$W/app.refs"
  local base_layer; base_layer=$(crane --insecure manifest "$UP/library/busybox:latest" | jq -r '.layers[0].digest')
  local want; want=$( { echo "${DIG[app]}"; grep -vx "$base_layer" "$W/app.refs"; } | LC_ALL=C sort | paste -sd' ')
  step "crane pull $A/app:2 (through A)" crane --insecure pull "$A/app:2" "$W/app-pulled.tar" || return
  stop_bg upstream

  local B2=$W/bundle2.tar
  step "berth export --since bundle.tar ${IMAGES[*]} app:2" \
    "$BERTH" export --server "http://$A" --out "$B2" --since "$BUNDLE" "${IMAGES[@]}" app:2 || return
  local s1 s2; s1=$(stat -c %s "$BUNDLE"); s2=$(stat -c %s "$B2")
  check "bundle2 is much smaller than bundle ($s2 vs $s1 bytes: < 1/4)" '[ $((s2 * 4)) -lt "$s1" ]'
  equal "bundle2's blobs are exactly app:2's new ones (manifest, config, layer)" \
    "$(bundle blobs "$B2" | cut -d' ' -f1 | paste -sd' ')" "$want"
  local refs2; refs2=$(bundle refs "$B2" 2>&1)
  check "bundle2 names app:2 in index.json" 'grep -qx docker.io/library/app:2 <<<"$refs2"' "$refs2"
  if [ -s "$BUNDLE.digests" ]; then
    step "berth export --since bundle.tar.digests (the sidecar alone)" \
      "$BERTH" export --server "http://$A" --out "$W/bundle2b.tar" --since "$BUNDLE.digests" "${IMAGES[@]}" app:2 &&
      equal "the same blobs as with --since bundle.tar" "$(bundle blobs "$W/bundle2b.tar" | cut -d' ' -f1 | paste -sd' ')" "$want"
    check "the sidecar is small (under 64 KiB)" '[ "$(stat -c %s "$BUNDLE.digests")" -lt 65536 ]'
  fi

  # A fresh berth C, offline, with client authentication: the incremental
  # bundle alone is refused (its base is missing), and needs push rights.
  echo "c-secret" | "$BERTH" htpasswd ci >"$RT/htpasswd" 2>"$RT/htpasswd.log"
  { cat "$RT/berth-offline.yaml"; printf 'auth:\n  htpasswd: %s\n' "$RT/htpasswd"; } >"$RT/berth-c.yaml"
  bstart berth-c "$RT/berth-c.yaml" || { S_FAILED=1; return; }
  local C=$ADDR_berth_c
  local before; before=$(state "http://$C" "$RT/berth-c-data")
  step_fails "import into C without credentials is refused" 'unauthori|401|credential|denied|authenti' \
    env DOCKER_CONFIG="$W/empty-docker-config" "$BERTH" import --server "http://$C" "$B2"
  step_fails "import of bundle2 alone into fresh C is refused, naming the missing base" 'base' \
    bash -c 'echo c-secret | DOCKER_CONFIG="$4" "$1" import --server "$2" --username ci --password-stdin "$3"' \
    _ "$BERTH" "http://$C" "$B2" "$W/empty-docker-config"
  local named; named=$(digests_in "$OUT" | grep -Fxf <(cut -d' ' -f1 "$W/bundle.blobs") | head -3 | paste -sd' ')
  check "the refusal names a blob of the base bundle" '[ -n "$named" ]' "$(tail -5 "$OUT")"
  equal "C's catalog and blob bytes unchanged" "$(state "http://$C" "$RT/berth-c-data")" "$before"
  step "with credentials, bundle then bundle2 import into C" \
    bash -c 'for f in "$3" "$4"; do echo c-secret | DOCKER_CONFIG="$5" "$1" import --server "$2" --username ci --password-stdin "$f" || exit; done' \
    _ "$BERTH" "http://$C" "$BUNDLE" "$B2" "$W/empty-docker-config" &&
    step "crane digest $C/app:2" crane --insecure digest "$C/app:2" && equal "  = the upstream's app:2" "$(cat "$OUT")" "${DIG[app]}"
  stop_bg berth-c

  use_berth berth-b
  step "import bundle2 into B after bundle" "$BERTH" import --server "http://$B" "$B2" || return
  step "crane digest $B/app:2" crane --insecure digest "$B/app:2" && equal "  = the upstream's app:2" "$(cat "$OUT")" "${DIG[app]}"
  step "crane pull $B/app:2 (base layer from bundle, new layer from bundle2)" crane --insecure pull "$B/app:2" "$W/app-b.tar"
  step "crane digest $B/busybox:latest still" crane --insecure digest "$B/busybox:latest" &&
    equal "  = the upstream's latest" "$(cat "$OUT")" "${DIG[latest]}"
}

sc_data_dir() {
  use_berth berth-a
  # A local image on A, then everything A holds (mirrored and local).
  step "crane copy $A/busybox:oci -> $A/team/app:1 (a local image on A)" crane --insecure copy "$A/busybox:oci" "$A/team/app:1" || return
  local ALL=$W/all.tar
  step "berth export --server http://$A --all --out all.tar" "$BERTH" export --server "http://$A" --all --out "$ALL" || return
  local refs; refs=$(bundle refs "$ALL" 2>&1)
  check "the --all bundle names mirrored and local images" \
    'grep -qx docker.io/library/busybox:latest <<<"$refs" && grep -q "team/app:1$" <<<"$refs"' "$refs"

  # A stopped berth D: started once (its data directory exists), stopped, imported into, started.
  bstart berth-d "$RT/berth-offline.yaml" || { S_FAILED=1; return; }
  local D=$ADDR_berth_d
  stop_bg berth-d
  step "berth import --data DIR all.tar (berth D stopped)" "$BERTH" import --data "$RT/berth-d-data" --config "$RT/berth-offline.yaml" "$ALL" || return
  start_berth berth-d "${D#*:}" "$RT/berth-offline.yaml" || { echo "  FAIL berth D did not start after the import"; tail -n 20 "$RT/berth-d.log" | sed 's/^/    | /'; S_FAILED=1; return; }
  use_berth berth-d
  local t
  for t in latest multi; do
    step "crane digest $D/busybox:$t" crane --insecure digest "$D/busybox:$t" && equal "  = the upstream's $t" "$(cat "$OUT")" "${DIG[$t]}"
  done
  [ -n "${DIG[app]:-}" ] && step "crane digest $D/app:2" crane --insecure digest "$D/app:2" && equal "  = the upstream's app:2" "$(cat "$OUT")" "${DIG[app]}"
  step "crane digest $D/team/app:1 (a local name)" crane --insecure digest "$D/team/app:1" && equal "  = A's team/app:1" "$(cat "$OUT")" "${DIG[oci]}"
  step "team/app is a local repository on D: crane copy team/app:1 -> team/app:2" crane --insecure copy "$D/team/app:1" "$D/team/app:2"
  step_fails "library/busybox stays a mirror on D (read-only)" 'denied|unsupported|40[35]' crane --insecure tag "$D/library/busybox:latest" pushed
  step "oras discover $D/library/busybox:oci" oras discover --plain-http --format json "$D/library/busybox:oci" &&
    check "it finds the SBOM" 'grep -q "${DIG[sbom]}" "$OUT"' "$(cat "$OUT")"
  step_fails "berth import --data DIR while berth D serves it is refused with a clear message" \
    'in use|lock|running|held|serv' "$BERTH" import --data "$RT/berth-d-data" --config "$RT/berth-offline.yaml" "$ALL"
  echo "    message: $(tail -n 1 "$OUT")"
}

sc_berth_log() {
  use_berth berth-b
  bexpect_none "berth B answered no request with a 5xx (refused bundles are client errors)" 0 '.status>=500'
}

# --- run -------------------------------------------------------------------------------------

bstart berth-b "$RT/berth-offline.yaml" || { echo "airgap-e2e: FAIL: berth B did not start"; exit 1; }
B=$ADDR_berth_b
echo "airgap-e2e: B (offline, upstream docker.io at dead $DEAD, empty data) on http://$B"
SCENARIOS=(warm export gap tamper import crane oras containerd docker incremental data-dir berth-log)
declare -A ON=([warm]=berth-a [export]=berth-a [gap]=berth-a [incremental]=berth-a [data-dir]=berth-a)
for s in "${SCENARIOS[@]}"; do use_berth "${ON[$s]:-berth-b}"; scenario "$s" "sc_${s//-/_}"; done

echo
{
  echo "airgap-e2e summary:"
  nfail=0
  for r in "${RESULTS[@]}"; do echo "  $r"; [[ $r == FAIL* ]] && nfail=$((nfail+1)); done
  echo "airgap-e2e: total time $(( $(date +%s) - T0 ))s; state and logs in $RT"
} | tee "$RT/summary.txt"
nfail=$(grep -c '^  FAIL' "$RT/summary.txt")
E2E_DONE=1
if [ "$nfail" -gt 0 ]; then echo "airgap-e2e: $nfail scenario(s) FAILED"; exit 1; fi
echo "airgap-e2e: all scenarios passed or skipped"
E2E_OK=1
