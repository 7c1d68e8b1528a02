#!/usr/bin/env bash
# Garbage collection, retention and the operator CLI end to end
# (`make gc-e2e`): a real `berth serve`, images pushed with crane, a
# distribution registry as the upstream of mirrored content.
#
#   local     crane pushes three images (one copied to a second repository)
#             and a blob with no manifest; nothing is collected within the
#             grace period; `crane delete` of one image; `berth gc --dry-run`
#             lists exactly the deleted image's blobs and the loose blob and
#             removes nothing; `berth gc` removes them: blobs/ shrinks by
#             exactly their bytes and the data directory (`du -sb`) by them
#             within a small tolerance for the index; the emptied repository
#             leaves /v2/_catalog; what is still tagged pulls whole.
#   retention a rule (keep_last: 1) drops the older tag of a ci/ repository.
#   CLI       `berth ls`, `ls REPO`, `du`, `rm` output checked, --json parsed.
#   mirrored  an image pulled through berth from distribution; the upstream
#             retags it; `berth revalidate` makes the next pull see the new
#             digest; `berth rm` purges it (its blobs leave the disk); the
#             next pull fetches it again; pushes into it are still refused.
#
# Prints PASS per step; exits non-zero on the first failure.
#   RT=/path          state directory (default: a new /tmp/berth-test.*)
#   BERTH_E2E_KEEP=1  keep the data directories after a passing run
. "$(dirname "$0")/lib.sh"
BERTH=$ROOT/bin/berth
echo "gc-e2e: state and logs in $RT"
for t in registry crane; do
  command -v $t >/dev/null || bash "$ROOT/.ci/install-tools.sh" >"$RT/install-tools.log" 2>&1
  command -v $t >/dev/null || fail "$t is required (make tools)"
done
for t in python3 curl du; do command -v $t >/dev/null || fail "$t is required"; done
[ -x "$BERTH" ] || fail "$BERTH missing: make build"
pass() { echo "PASS: $*"; }
jq_py() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

UPP=$(free_port); BP=$(free_port)
UP=127.0.0.1:$UPP; B=127.0.0.1:$BP
start_distribution upstream "$UPP"
cat >"$RT/berth.yaml" <<YML
gc: {interval: 0, grace: 1h}
uploads: {max_sessions: 3}
upstreams:
  - name: upstream.test
    url: http://$UP
    tag_ttl: 1h
retention:
  - repos: ["ci/**"]
    keep_last: 1
YML
start_berth berth "$BP" "$RT/berth.yaml"
DATA=$RT/berth-data
export BERTH_SERVER=http://$B
C="crane --insecure"

# layer NAME MiB : a tar of MiB random bytes (incompressible: gzip keeps its size).
layer() { mkdir -p "$RT/l/$1"; head -c $(($2 << 20)) /dev/urandom >"$RT/l/$1/data.bin"
  tar -C "$RT/l/$1" -cf "$RT/l/$1.tar" data.bin; }
# image_bytes REF : manifest + config + layers of REF, as stored.
image_bytes() { local m; m=$($C manifest "$1"); printf '%s' "$m" | python3 -c '
import json,sys; b=sys.stdin.buffer.read(); m=json.loads(b)
print(len(b) + m["config"]["size"] + sum(l["size"] for l in m["layers"]))'; }
blobs_bytes() { find "$DATA/blobs" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}'; }
data_bytes() { du -sb "$DATA" | cut -f1; }

# --- local content -------------------------------------------------------------
layer a 6; layer b 3; layer c 2
$C append -f "$RT/l/a.tar" -t "$B/team/app:v1" >/dev/null 2>>"$RT/crane.log" || fail "push team/app:v1"
$C append -f "$RT/l/b.tar" -t "$B/team/app:v2" >/dev/null 2>>"$RT/crane.log" || fail "push team/app:v2"
$C append -f "$RT/l/c.tar" -t "$B/team/tmp:1" >/dev/null 2>>"$RT/crane.log" || fail "push team/tmp:1"
$C copy "$B/team/app:v2" "$B/team/keep:v2" 2>>"$RT/crane.log" || fail "copy to team/keep"
head -c $((1 << 20)) /dev/urandom >"$RT/loose.bin"
loose=sha256:$(sha256sum "$RT/loose.bin" | cut -d' ' -f1)
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST --data-binary @"$RT/loose.bin" \
  -H 'Content-Type: application/octet-stream' "http://$B/v2/team/loose/blobs/uploads/?digest=$loose")
[ "$code" = 201 ] || fail "monolithic blob push: $code"
v1=$($C digest "$B/team/app:v1"); tmp=$($C digest "$B/team/tmp:1")
want=$(( $(image_bytes "$B/team/app:v1") + $(image_bytes "$B/team/tmp:1") + (1 << 20) ))
pass "pushed 3 images, a copy and a loose blob ($(data_bytes) bytes in $DATA)"

out=$("$BERTH" gc --json) || fail "berth gc: $out"
n=$(printf '%s' "$out" | jq_py 'len(d["blobs"])')
[ "$n" = 0 ] || fail "gc within the grace period removed $n blobs: $out"
pass "nothing is collected within the grace period (gc.grace 1h)"

$C delete "$B/team/app@$v1" 2>>"$RT/crane.log" || fail "crane delete team/app@v1"
$C delete "$B/team/tmp@$tmp" 2>>"$RT/crane.log" || fail "crane delete team/tmp@1"
before_blobs=$(blobs_bytes); before=$(data_bytes); nfiles=$(find "$DATA/blobs" -type f | wc -l)

out=$("$BERTH" gc --dry-run --grace 0s --json) || fail "berth gc --dry-run: $out"
got=$(printf '%s' "$out" | jq_py 'd["bytes"]')
[ "$got" = "$want" ] || fail "dry run would free $got bytes, the deleted images and loose blob hold $want: $out"
printf '%s' "$out" | jq_py '"team/tmp" in d["repos"] and "team/loose" in d["repos"] and d["dryRun"]' | grep -qx True ||
  fail "dry run does not list the emptied repositories: $out"
[ "$(blobs_bytes)" = "$before_blobs" ] && [ "$(find "$DATA/blobs" -type f | wc -l)" = "$nfiles" ] ||
  fail "dry run removed files"
for d in $(printf '%s' "$out" | jq_py '" ".join(b["digest"] for b in d["blobs"])'); do
  [ -f "$DATA/blobs/sha256/${d:7:2}/${d:7}" ] || fail "dry run removed $d"
done
"$BERTH" gc --dry-run --grace 0s >"$RT/gc-dry.out" || fail "berth gc --dry-run"
grep -q "^would remove blob $loose" "$RT/gc-dry.out" || fail "berth gc --dry-run table lacks the loose blob: $(cat "$RT/gc-dry.out")"
pass "gc --dry-run lists $got bytes (the deleted images and the loose blob) and removes nothing"

out=$("$BERTH" gc --grace 0s --json) || fail "berth gc: $out"
got=$(printf '%s' "$out" | jq_py 'd["bytes"]')
[ "$got" = "$want" ] || fail "gc freed $got bytes, want $want: $out"
after_blobs=$(blobs_bytes); after=$(data_bytes)
[ $((before_blobs - after_blobs)) = "$want" ] || fail "blobs/ shrank by $((before_blobs - after_blobs)), want $want"
drop=$((before - after)); tol=$((512 << 10))
[ $((drop - want)) -le $tol ] && [ $((want - drop)) -le $tol ] ||
  fail "du -sb $DATA went from $before to $after (-$drop), want -$want within $tol"
pass "gc freed $want bytes: du -sb of the data directory $before -> $after"

cat=$(curl -s "http://$B/v2/_catalog")
case "$cat" in *team/tmp*|*team/loose*) fail "emptied repositories still in the catalog: $cat";; esac
case "$cat" in *team/app*) ;; *) fail "team/app left the catalog: $cat";; esac
$C pull "$B/team/app:v2" "$RT/v2.tar" 2>>"$RT/crane.log" || fail "pull of the kept image"
$C pull "$B/team/keep:v2" "$RT/keep.tar" 2>>"$RT/crane.log" || fail "pull of the copied image"
out=$("$BERTH" gc --grace 0s --json); [ "$(printf '%s' "$out" | jq_py 'd["bytes"]')" = 0 ] || fail "second gc removed more: $out"
pass "emptied repositories left /v2/_catalog; kept images pull whole; a second gc finds nothing"

# --- upload sessions ----------------------------------------------------------------
locs=()
for i in 1 2 3; do
  loc=$(curl -s -o /dev/null -w '%header{location}' -X POST "http://$B/v2/team/up/blobs/uploads/")
  [ -n "$loc" ] || fail "upload session $i not started"
  locs+=("$loc")
done
code=$(curl -s -o "$RT/cap.json" -w '%{http_code}' -X POST "http://$B/v2/team/up/blobs/uploads/")
[ "$code" = 429 ] && grep -q TOOMANYREQUESTS "$RT/cap.json" || fail "4th upload session: $code $(cat "$RT/cap.json")"
for loc in "${locs[@]}"; do
  case "$loc" in http*) u=$loc;; *) u=http://$B$loc;; esac
  curl -s -o /dev/null -X DELETE "$u"
done
loc=$(curl -s -o /dev/null -w '%{http_code} %header{location}' -X POST "http://$B/v2/team/up/blobs/uploads/")
[ "${loc%% *}" = 202 ] || fail "upload session after cancelling the others: $loc"
loc=${loc#* }; case "$loc" in http*) ;; *) loc=http://$B$loc;; esac
curl -s -o /dev/null -X DELETE "$loc"
pass "uploads.max_sessions: 3 refuses a 4th session with 429 TOOMANYREQUESTS, until one ends"

# --- retention ------------------------------------------------------------------
$C append -f "$RT/l/c.tar" -t "$B/ci/build:1" >/dev/null 2>>"$RT/crane.log" || fail "push ci/build:1"
$C append -f "$RT/l/b.tar" -t "$B/ci/build:2" >/dev/null 2>>"$RT/crane.log" || fail "push ci/build:2"
plan=$("$BERTH" gc --dry-run --json | jq_py '" ".join(t["repo"]+":"+t["tag"] for t in d["tags"])')
[ "$plan" = "ci/build:1" ] || fail "retention plan: '$plan', want ci/build:1"
"$BERTH" gc >"$RT/gc-retention.out" || fail "berth gc (retention)"
grep -q "removed tag ci/build:1: not among the 1 most recently pushed" "$RT/gc-retention.out" || fail "retention report: $(cat "$RT/gc-retention.out")"
[ "$($C ls "$B/ci/build" 2>/dev/null | paste -sd,)" = 2 ] || fail "ci/build tags after retention: $($C ls "$B/ci/build" | paste -sd,)"
pass "retention keep_last: 1 removed ci/build:1 and kept ci/build:2"

# --- the CLI ----------------------------------------------------------------------
"$BERTH" ls >"$RT/ls.out" || fail "berth ls"
grep -Eq '^REPOSITORY +ORIGIN +TAGS +SIZE +LAST PUSHED +LAST PULLED' "$RT/ls.out" || fail "berth ls header: $(cat "$RT/ls.out")"
grep -Eq '^team/app +local +1 +3\.0 MiB' "$RT/ls.out" || fail "berth ls row for team/app: $(cat "$RT/ls.out")"
tags=$("$BERTH" ls --json team/app | jq_py '",".join(t["tag"] for t in d["tags"])')
[ "$tags" = v2 ] || fail "berth ls --json team/app: $tags"
"$BERTH" ls team/app >"$RT/ls-repo.out" || fail "berth ls team/app"
grep -Eq '^v2 +sha256:[0-9a-f]{12} +3\.0 MiB' "$RT/ls-repo.out" || fail "berth ls team/app: $(cat "$RT/ls-repo.out")"
du_local=$("$BERTH" du --json | jq_py 'd["local"]'); du_total=$("$BERTH" du --json | jq_py 'd["total"]')
[ "$du_local" = "$(blobs_bytes)" ] && [ "$du_total" = "$du_local" ] || fail "berth du: local $du_local total $du_total, blobs/ $(blobs_bytes)"
"$BERTH" du >"$RT/du.out" || fail "berth du"
grep -Eq '^ *total +[0-9]+ ' "$RT/du.out" || fail "berth du table: $(cat "$RT/du.out")"
"$BERTH" rm team/keep:v2 >"$RT/rm.out" || fail "berth rm team/keep:v2"
grep -q "removed tag team/keep:v2" "$RT/rm.out" && grep -q "removed manifest team/keep@" "$RT/rm.out" || fail "berth rm: $(cat "$RT/rm.out")"
"$BERTH" rm team/nope:v1 2>"$RT/rm-nope.err" && fail "berth rm of an unknown repository succeeded"
grep -q NAME_UNKNOWN "$RT/rm-nope.err" || fail "berth rm unknown: $(cat "$RT/rm-nope.err")"
out=$("$BERTH" gc --grace 0s --json)
printf '%s' "$out" | jq_py '"team/keep" in d["repos"] and d["bytes"] < 10000' | grep -qx True ||
  fail "after rm of the copy, gc should drop team/keep and only its manifest: $out"
$C pull "$B/team/app:v2" "$RT/v2b.tar" 2>>"$RT/crane.log" || fail "team/app:v2 lost its shared layer"
pass "berth ls / ls REPO / du / rm print what they should (tables and --json)"

# --- mirrored content ---------------------------------------------------------------
layer m 3; layer n 2   # content no local image shares
$C append -f "$RT/l/m.tar" -t "$UP/library/bad:1" >/dev/null 2>>"$RT/crane.log" || fail "push to the upstream"
d1=$($C digest "$UP/library/bad:1")
M=$B/upstream.test/library/bad
[ "$($C digest "$M:1")" = "$d1" ] || fail "pull through berth"
$C pull "$M:1" "$RT/bad1.tar" 2>>"$RT/crane.log" || fail "crane pull through berth"
up_bytes=$("$BERTH" du --json | jq_py 'd["upstreams"].get("upstream.test", 0)')
[ "$up_bytes" -ge $((2 << 20)) ] || fail "berth du: upstream.test holds $up_bytes bytes"
"$BERTH" ls >"$RT/ls2.out" || fail "berth ls"
grep -Eq '^upstream.test/library/bad +upstream.test +1 ' "$RT/ls2.out" || fail "berth ls lacks the mirrored repository: $(cat "$RT/ls2.out")"
$C append -f "$RT/l/n.tar" -t "$UP/library/bad:1" >/dev/null 2>>"$RT/crane.log" || fail "retag upstream"
d2=$($C digest "$UP/library/bad:1")
[ "$($C digest "$M:1")" = "$d1" ] || fail "tag_ttl 1h: berth should still serve the cached digest"
"$BERTH" revalidate upstream.test/library/bad:1 >/dev/null || fail "berth revalidate"
[ "$($C digest "$M:1")" = "$d2" ] || fail "after revalidate berth serves $($C digest "$M:1"), upstream has $d2"
pass "a retagged upstream image is seen after berth revalidate"
"$BERTH" rm --tag-only upstream.test/library/bad:1 >/dev/null || fail "berth rm --tag-only"
$C pull "$M:1" "$RT/bad2.tar" 2>>"$RT/crane.log" || fail "pull after rm --tag-only"
before_blobs=$(blobs_bytes)
out=$("$BERTH" rm --json "upstream.test/library/bad@$d1") || fail "berth rm of the old mirrored image: $out"
freed=$(printf '%s' "$out" | jq_py 'd["bytes"]')
[ "$freed" -ge $((2 << 20)) ] && [ $((before_blobs - $(blobs_bytes))) = "$freed" ] ||
  fail "purge of $d1 freed $freed, blobs/ shrank by $((before_blobs - $(blobs_bytes))): $out"
out=$("$BERTH" rm --json upstream.test/library/bad:1) || fail "berth rm of the mirrored image: $out"
printf '%s' "$out" | jq_py '"1" in d["tags"] and len(d["blobs"]) >= 2' | grep -qx True || fail "purge report: $out"
for b in $(printf '%s' "$out" | jq_py '" ".join(b["digest"] for b in d["blobs"])'); do
  [ ! -e "$DATA/blobs/sha256/${b:7:2}/${b:7}" ] || fail "purged blob $b still on disk"
done
gets=$(count_log "$RT/upstream.log" 'GET /v2/library/bad/manifests/')
$C pull "$M:1" "$RT/bad3.tar" 2>>"$RT/crane.log" || fail "pull after purge"
[ "$(count_log "$RT/upstream.log" 'GET /v2/library/bad/manifests/')" -gt "$gets" ] || fail "the pull after the purge did not ask the upstream"
[ "$($C digest "$M:1")" = "$d2" ] || fail "re-fetched digest"
if $C copy "$B/team/app:v2" "$M:evil" 2>"$RT/evil.err"; then fail "a client pushed into a mirrored repository"; fi
pass "berth rm purges a mirrored image (blobs leave the disk) and the next pull fetches it again; clients still cannot write it"

curl -s "http://$B/metrics" >"$RT/metrics.out"
grep -Eq '^berth_gc_removed_bytes_total [1-9]' "$RT/metrics.out" || fail "berth_gc_removed_bytes_total not reported"
grep -q '"message":"garbage collected"' "$RT/berth.log" || fail "no garbage collection log line"
pass "metrics and log report the collections"
[ "${BERTH_E2E_KEEP:-0}" = 1 ] || { stop_all; rm -rf "$DATA" "$RT/upstream-data" "$RT/l" "$RT"/*.tar; }
echo "gc-e2e: all passed (logs in $RT)"
