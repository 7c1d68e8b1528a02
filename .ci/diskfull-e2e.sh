#!/usr/bin/env bash
# A full disk is an answer, not a crash: a real `berth serve` on a small tmpfs
# (disk_reserve 32MiB of 128MiB), distribution's registry as its upstream,
# crane and curl as clients.
#   1. Another process takes the disk down to 1 MiB above the reserve: a push
#      that would cross it gets 507 UNAVAILABLE (monolithic and chunked), its
#      staging file is removed, nothing is indexed; berth keeps running.
#   2. Pulls of cached content (pushed and mirrored) verify; a pull of an
#      image that was never cached streams from the upstream without caching.
#   3. The space is freed: the same push works, no restart.
#   4. The disk is filled to the last byte: 30 upload POSTs (what used to kill
#      berth with SIGBUS in Badger's memtable) all get 507; berth still runs
#      and still serves pulls.
#   5. Restart with the disk full: berth refuses to start with one line naming
#      disk_reserve (exit 1, no signal, no crash loop).
#   6. Space freed, restart: every tag resolves, every blob verifies, and
#      pushes work.
#   7. The filesystem remounted read-only under berth: writes get 503,
#      /readyz fails and the log says why; remounted read-write, it recovers
#      (where the kernel allows the remount with berth's files open).
#   8. The data directory removed (rm -rf) under berth: 200 manifest PUTs
#      all get 503 (none acknowledged and lost), /readyz fails, the log says why.
# Needs root (mount -t tmpfs); skipped with the reason otherwise, or failed
# when BERTH_E2E_REQUIRED=1.
. "$(dirname "$0")/lib.sh"
skip() { if [ "${BERTH_E2E_REQUIRED:-}" = 1 ]; then fail "$* (BERTH_E2E_REQUIRED=1)"; fi; echo "SKIP diskfull-e2e: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "not root: cannot mount a tmpfs"
DISK="$RT/disk"; mkdir -p "$DISK"
mount -t tmpfs -o size=128m tmpfs "$DISK" 2>"$RT/mount.err" || skip "mount -t tmpfs failed: $(cat "$RT/mount.err")"
cleanup() { stop_all; umount "$DISK" 2>/dev/null || umount -l "$DISK" 2>/dev/null || true; }
trap cleanup EXIT

UP_PORT=$(free_port); BERTH_PORT=$(free_port)
UP=127.0.0.1:$UP_PORT; B=127.0.0.1:$BERTH_PORT
start_distribution upstream "$UP_PORT"
c() { crane --insecure "$@" 2>>"$RT/crane.log"; }
mkdir -p "$RT/img"
for n in 1 2; do
  head -c 2000000 /dev/urandom >"$RT/img/data$n"; tar -C "$RT/img" -cf "$RT/img/layer$n.tar" "data$n"
  c append --oci-empty-base -f "$RT/img/layer$n.tar" -t "$UP/library/app$n:1" >/dev/null || fail "seed upstream"
done
cat >"$RT/berth.yaml" <<YML
upstreams:
  - name: docker.io
    url: http://$UP
    default: true
local: ["team/**"]
disk_reserve: 32MiB
YML
berth() { start_bg berth "$ROOT/bin/berth" serve --config "$RT/berth.yaml" --addr "$B" --data "$DISK/data" --log-format json; }
berth; wait_http "http://$B/v2/"
free_bytes() { df -B1 --output=avail "$DISK" | tail -1 | tr -d ' '; }
alive() { kill -0 "$(cat "$RT/berth.pid")" 2>/dev/null || { tail -20 "$RT/berth.log" >&2; fail "berth died: $1"; }; }
# verify REF: the manifest resolves and every blob it names has its digest.
verify() { local ref=$1 repo=${1%:*} m; m=$(c manifest "$ref") || fail "manifest $ref"
  for d in $(echo "$m" | jq -r '.config.digest, .layers[].digest'); do
    got=$(curl -sf "http://$B/v2/${repo#"$B"/}/blobs/$d" | sha256sum | cut -d' ' -f1)
    [ "sha256:$got" = "$d" ] || fail "$ref: blob $d reads as sha256:$got"
  done; }
# push_blob REPO FILE: a monolithic push (POST ?digest=); prints the status.
push_blob() { curl -s -o "$RT/push.out" -w '%{http_code}' -X POST -H 'Content-Type: application/octet-stream' \
  --data-binary @"$2" "http://$B/v2/$1/blobs/uploads/?digest=sha256:$(sha256sum "$2" | cut -d' ' -f1)"; }
ingest_files() { find "$DISK/data/ingest" -type f | wc -l; }

echo "--- content before the disk fills: a pushed image and a mirrored one"
c copy "$UP/library/app1:1" "$B/team/app:1" || fail "push team/app:1"
c pull "$B/library/app1:1" "$RT/warm.tar" || fail "mirror pull of app1"
verify "$B/team/app:1"; verify "$B/library/app1:1"

echo "--- 1. another process leaves the reserve + 1 MiB: pushes past it get 507"
avail=$(free_bytes); fill=$(( avail - (32 << 20) - (1 << 20) ))
fallocate -l "$fill" "$DISK/filler1" 2>/dev/null || head -c "$fill" /dev/zero >"$DISK/filler1"
head -c $((8 << 20)) /dev/urandom >"$RT/big"
code=$(push_blob team/big "$RT/big")
[ "$code" = 507 ] || fail "monolithic push past the reserve: HTTP $code, want 507 ($(cat "$RT/push.out"))"
jq -e '.errors[0].code == "UNAVAILABLE" and (.errors[0].message | contains("disk_reserve"))' "$RT/push.out" >/dev/null ||
  fail "507 body: $(cat "$RT/push.out")"
# chunked: POST, then PATCHes of 2 MiB until one is refused
loc=$(curl -s -D - -o /dev/null -X POST "http://$B/v2/team/big/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
[ -n "$loc" ] || fail "chunked upload: no Location"
case $loc in http*) ;; *) loc="http://$B$loc";; esac
head -c $((2 << 20)) /dev/urandom >"$RT/chunk"; got=""
for i in $(seq 8); do
  code=$(curl -s -o "$RT/patch.out" -w '%{http_code}' -X PATCH -H 'Content-Type: application/octet-stream' --data-binary @"$RT/chunk" "$loc")
  [ "$code" = 202 ] || { got=$code; break; }
done
[ "$got" = 507 ] || fail "chunked push past the reserve: PATCH answered ${got:-202 eight times}, want 507"
code=$(curl -s -o /dev/null -w '%{http_code}' "$loc")
[ "$code" = 404 ] || fail "the refused upload is still there (GET its status: $code, want 404)"
[ "$(ingest_files)" = 0 ] || fail "staging files left after refused pushes: $(ls "$DISK/data/ingest")"
code=$(curl -s -o /dev/null -w '%{http_code}' -I "http://$B/v2/team/big/blobs/sha256:$(sha256sum "$RT/big" | cut -d' ' -f1)")
[ "$code" = 404 ] || fail "a refused blob is indexed: HEAD $code"
alive "pushes past the reserve"
refused=$(curl -sf "http://$B/metrics" | awk '$1=="berth_writes_refused_no_space_total"{print $2}')
[ "${refused:-0}" != 0 ] || fail "berth_writes_refused_no_space_total is ${refused:-missing} after refused pushes"

echo "--- 2. pulls go on; a never-cached image streams from the upstream"
verify "$B/team/app:1"; verify "$B/library/app1:1"
verify "$B/library/app2:1"
grep -q 'blob not cached: streaming it from upstream' "$RT/berth.log" || fail "no pass-through logged for app2's blobs"

echo "--- 3. space freed: the same push works without a restart"
rm -f "$DISK/filler1"
ok=""
for _ in $(seq 50); do   # a condition, polled: the first try should do
  code=$(push_blob team/big "$RT/big"); [ "$code" = 201 ] && { ok=1; break; }; sleep 0.1
done
[ -n "$ok" ] || fail "push after freeing space: HTTP $code"

echo "--- 4. the disk filled to the last byte: upload POSTs are refused, berth lives"
head -c $((256 << 20)) /dev/zero >"$DISK/filler2" 2>/dev/null || true
[ "$(free_bytes)" -lt $((1 << 20)) ] || fail "could not fill the tmpfs ($(free_bytes) bytes free)"
for i in $(seq 30); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$B/v2/team/full/blobs/uploads/")
  [ "$code" = 507 ] || fail "upload POST $i on a full disk: HTTP $code, want 507"
done
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
  --data-binary "$(c manifest "$B/team/app:1")" "http://$B/v2/team/app/manifests/2")
[ "$code" = 507 ] || fail "manifest PUT on a full disk: HTTP $code, want 507"
alive "30 upload POSTs and a manifest PUT on a full disk"
verify "$B/team/app:1"; verify "$B/library/app1:1"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$B/readyz")" = 200 ] || fail "/readyz on a full (but healthy) disk"
curl -sf "http://$B/metrics" >"$RT/metrics.full"; grep -q "^berth_storage_writable 0" "$RT/metrics.full" || fail "berth_storage_writable should be 0 on a full disk: $(grep -E "^berth_(disk|storage)" "$RT/metrics.full")"

echo "--- 5. restart on the full disk: refused with one line naming disk_reserve"
stop_bg berth
set +e; timeout 60 "$ROOT/bin/berth" serve --config "$RT/berth.yaml" --addr "$B" --data "$DISK/data" --log-format json >"$RT/start-full.log" 2>&1; rc=$?; set -e
[ "$rc" = 1 ] || { cat "$RT/start-full.log" >&2; fail "start on a full disk: exit $rc, want 1 (a signal is >128)"; }
grep -q 'disk_reserve' "$RT/start-full.log" || fail "start on a full disk does not name disk_reserve: $(cat "$RT/start-full.log")"

echo "--- 6. space freed, restart: nothing acknowledged is lost; pushes work"
rm -f "$DISK/filler2"
berth; wait_http "http://$B/v2/"
verify "$B/team/app:1"; verify "$B/library/app1:1"
code=$(curl -s -o /dev/null -w '%{http_code}' -I "http://$B/v2/team/big/blobs/sha256:$(sha256sum "$RT/big" | cut -d' ' -f1)")
[ "$code" = 200 ] || fail "the blob pushed in step 3 is gone after the restart: HEAD $code"
c copy "$UP/library/app2:1" "$B/team/app:2" || fail "push after the restart"
verify "$B/team/app:2"
[ "$(ingest_files)" = 0 ] || fail "staging files left: $(ls "$DISK/data/ingest")"

echo "--- 7. the filesystem turns read-only under berth: writes 503, /readyz fails, then recovers"
if mount -o remount,ro "$DISK" 2>"$RT/remount.err"; then
  ok=""
  for _ in $(seq 100); do   # the probe runs every 2 s: poll /readyz for the condition
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$B/readyz")" = 503 ] && { ok=1; break; }; sleep 0.1
  done
  [ -n "$ok" ] || fail "/readyz still ok 10 s after the filesystem turned read-only"
  grep -q 'storage unavailable: refusing writes' "$RT/berth.log" || fail "no log line saying why writes are refused"
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://$B/v2/team/ro/blobs/uploads/")
  [ "$code" = 503 ] || fail "upload POST on a read-only filesystem: HTTP $code, want 503"
  verify "$B/team/app:1"
  mount -o remount,rw "$DISK" || fail "remount rw"
  ok=""
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$B/readyz")" = 200 ] && { ok=1; break; }; sleep 0.1
  done
  [ -n "$ok" ] || fail "/readyz did not recover 10 s after the filesystem turned writable again"
  c copy "$UP/library/app1:1" "$B/team/app:3" || fail "push after the filesystem recovered"
else
  echo "SKIP step 7: mount -o remount,ro refused ($(cat "$RT/remount.err")): files open for writing"
fi

echo "--- 8. the data directory removed under berth (rm -rf): 200 manifest PUTs refused, none acknowledged"
man=$(c manifest "$B/team/app:1")
rm -rf "$DISK/data"
created=0
for i in $(seq 200); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "$man" "http://$B/v2/team/app/manifests/gone$i")
  case $code in 201) created=$((created+1));; 503) ;; *) fail "manifest PUT $i into a removed data directory: HTTP $code";; esac
done
[ "$created" = 0 ] || fail "$created manifest PUTs into a removed data directory were acknowledged 201"
code=$(curl -s -o "$RT/readyz.out" -w '%{http_code}' "http://$B/readyz")
[ "$code" = 503 ] && grep -q 'storage unavailable' "$RT/readyz.out" || fail "/readyz after rm -rf of the data directory: $code $(cat "$RT/readyz.out")"
logged=""
for _ in $(seq 100); do   # the probe logs it within 2 s: poll for the line
  [ "$(count_log "$RT/berth.log" '"reason":"data directory [^"]*(no such file|replaced)[^"]*".*storage unavailable: refusing writes')" -gt 0 ] && { logged=1; break; }; sleep 0.1
done
[ -n "$logged" ] || fail "no log line saying the data directory is gone: $(grep -c . "$RT/berth.log") lines logged"
alive "the end"
echo "diskfull-e2e: PASS"
