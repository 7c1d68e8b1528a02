#!/usr/bin/env bash
# berth as a cluster, end to end, with real processes: SeaweedFS as the S3
# server (.ci/seaweedfs.sh), distribution's registry as the upstream behind a
# throttle (bench/lb -rate, so that fills last long enough to be joined and
# interrupted; its access log counts upstream GETs), three `berth serve`
# replicas on one bucket prefix with their own --data dirs, and a round-robin
# TCP balancer without affinity in front (bench/lb). Scenarios:
#   herd         48 clients (16 per replica, directly) on one cold 256 MiB blob:
#                one upstream GET in the whole cluster, every client verified
#   push-pull    push through r1, pull through r2 and r3 at once; overwrite the
#                tag on r2, read it on r3 (and r1) right after
#   range        Range reads on every replica while a cold blob fills: right
#                bytes, one upstream GET
#   tag-race     two tag writes at once on two replicas, 10 rounds: every
#                replica then sees the same one of the two
#   conformance  the OCI suite, full profile, through the balancer (in the
#                background during push-pull and tag-race)
#   kill-fill    kill -9 the replica filling a cold blob for clients behind the
#                balancer: retries succeed, the new owner completes the fill
#                (2 upstream GETs: the killed one and the new owner's), the
#                replica restarts, is ready and serves the blob
#   kill-push    kill -9 the replica receiving a PATCH of a chunked push through
#                the balancer, mid-body: the client retries, the push completes, its
#                image reads back everywhere; the replica restarts and rejoins
#   durable      everything acknowledged above reads back from every replica
#   dockerd      dockerd with registry-mirrors = the balancer pulls and runs an image
#   s3-go        the bucket driver's Go tests against this SeaweedFS (three
#                registries on one prefix; the collector and a push racing it)
#   bucket-down  SeaweedFS stopped: every replica still serves cached mirrored blobs
# CLUSTER_E2E_ONLY="herd kill-fill" runs only the scenarios named.
# BERTH_E2E_REQUIRED=1 (CI) turns a skip (no SeaweedFS build, no dockerd) into a failure.
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
# Logs stay in $RT; the big files and the store's data go.
trap 'stop_all; rm -rf "$RT/seaweedfs/data" "$RT"/*.bin' EXIT
REQUIRED=${BERTH_E2E_REQUIRED:-0}
unavailable() { if [ "$REQUIRED" = 1 ]; then fail "$1 (BERTH_E2E_REQUIRED=1)"; fi; echo "cluster e2e: SKIP: $1"; exit 0; }

for c in curl python3 ss join; do command -v $c >/dev/null || unavailable "$c is not installed"; done
go build -o "$RT/lb" ./bench/lb && go build -o "$RT/cc" ./bench/clusterclient || fail "building bench/lb, bench/clusterclient"
BIG=${CLUSTER_E2E_BLOB_MIB:-256}    # the herd blob, MiB
RATE=${CLUSTER_E2E_UPSTREAM_RATE:-40000000}   # upstream throttle, bytes/s per connection

echo "--- SeaweedFS"
if ! sw=$(SW_DIR="$RT/seaweedfs" bash .ci/seaweedfs.sh start 2>"$RT/seaweedfs-start.log"); then
  cat "$RT/seaweedfs-start.log"; cp "$RT/seaweedfs/weed.pid" "$RT/weed.pid" 2>/dev/null || true
  unavailable "SeaweedFS did not start (log $RT/seaweedfs-start.log)"
fi
eval "$sw"; cp "$SW_DIR/weed.pid" "$RT/weed.pid"   # stopped with everything else
PREFIX="cluster-e2e-$(date +%s)-$$/"
export BERTH_CLUSTER_SECRET=$(head -c 24 /dev/urandom | base64)

echo "--- upstream (distribution) behind a ${RATE} B/s throttle"
UP_PORT=$(free_port); UP=127.0.0.1:$UP_PORT
start_distribution upstream "$UP_PORT"
SLOW_PORT=$(free_port)
start_bg upslow "$RT/lb" -listen "127.0.0.1:$SLOW_PORT" -backends "$UP" -rate "$RATE"
wait_http "http://127.0.0.1:$SLOW_PORT/v2/"
# in_bucket DIGEST [secs] : the blob is under the prefix's blobs/ (polled; S3 SigV4 by curl).
in_bucket() { local k="${PREFIX}blobs/${1/://}" s=${2:-30}
  for _ in $(seq $((s*10))); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -I --aws-sigv4 "aws:amz:$AWS_REGION:s3" \
      --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" "$S3_ENDPOINT/$S3_BUCKET/$k")" = 200 ] && return 0
    sleep 0.1; done; return 1; }
upstream_gets() { count_log "$RT/upstream.log" "\"GET /v2/[^ ]*/blobs/$1"; }
# push_upstream REPO FILE : a blob straight into the upstream; prints its digest.
push_upstream() { local d loc; d=sha256:$(sha256sum "$2" | cut -d' ' -f1)
  loc=$(curl -sf -D - -o /dev/null -X POST "http://$UP/v2/$1/blobs/uploads/" | tr -d '\r' | sed -n 's/^Location: //Ip')
  case $loc in http*) ;; *) loc="http://$UP$loc";; esac
  curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' -T "$2" "$loc&digest=$d" || return 1
  echo "$d"; }

echo "--- three replicas and the balancer"
P=(); for i in 1 2 3; do P[i]=$(free_port); done
R=(); for i in 1 2 3; do R[i]=http://127.0.0.1:${P[i]}; done
cat >"$RT/berth.yaml" <<YML
log_level: info
upstreams:
  - {name: docker.io, url: "http://127.0.0.1:$SLOW_PORT", default: true, tag_ttl: 1h}
local: ["team/**", "conformance/**"]
storage:
  driver: s3
  bucket: $S3_BUCKET
  endpoint: $S3_ENDPOINT
  region: $AWS_REGION
  prefix: $PREFIX
  path_style: true
cluster:
  members: [${R[1]}, ${R[2]}, ${R[3]}]
  secret_env: BERTH_CLUSTER_SECRET
YML
# wait_ready URL [secs] : GET URL/readyz answers 200.
wait_ready() { local s=${2:-60}; for _ in $(seq $((s*10))); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1/readyz")" = 200 ] && return 0; sleep 0.1; done
  echo "timeout waiting for $1/readyz" >&2; return 1; }
# start_replica I : replica I on its port with its own data dir (kept across restarts).
start_replica() { local i=$1
  start_bg "r$i" env BERTH_CLUSTER_SELF="${R[i]}" "$ROOT/bin/berth" serve --config "$RT/berth.yaml" \
    --addr "127.0.0.1:${P[i]}" --data "$RT/r$i-data" --log-format json
  wait_ready "${R[i]}" || { tail -20 "$RT/r$i.log"; return 1; }; }
starting=(); for i in 1 2 3; do start_replica "$i" & starting+=($!); done; wait "${starting[@]}" || true
for i in 1 2 3; do wait_ready "${R[i]}" 1 || fail "replica $i did not become ready: $(tail -5 "$RT/r$i.log")"; done
LB_PORT=$(free_port); LB=127.0.0.1:$LB_PORT
start_bg lb "$RT/lb" -listen "$LB" -log -backends "127.0.0.1:${P[1]},127.0.0.1:${P[2]},127.0.0.1:${P[3]}"
wait_http "http://$LB/v2/"
# replica_of PID : the replica number whose process is PID.
replica_of() { local i; for i in 1 2 3; do [ "$(cat "$RT/r$i.pid" 2>/dev/null)" = "$1" ] && echo "$i" && return; done; }
# kill9 I : kill -9 replica I and wait until it is gone.
kill9() { local p; p=$(cat "$RT/r$1.pid"); kill -KILL "$p"; rm -f "$RT/r$1.pid"
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.05; done; }

# ensure_all : every replica runs (one a failed scenario left dead is restarted).
ensure_all() { local i; for i in 1 2 3; do
  if ! kill -0 "$(cat "$RT/r$i.pid" 2>/dev/null)" 2>/dev/null; then echo "  (restarting r$i)"; start_replica "$i" || return 1; fi; done; }

FAILED=(); RESULTS=()
# run NAME : run sc_NAME in a subshell (its `fail` ends only it); record the outcome.
# CLUSTER_E2E_ONLY="herd kill-fill" runs only those scenarios.
OPT_IN=" "
run() { local t0=$SECONDS
  if [ -n "${CLUSTER_E2E_ONLY:-}" ] && [[ " $CLUSTER_E2E_ONLY " != *" $1 "* ]]; then return 0; fi
  if [ -z "${CLUSTER_E2E_ONLY:-}" ] && [[ $OPT_IN == *" $1 "* ]]; then return 0; fi
  echo "--- $1"
  if ( set -euo pipefail; "sc_${1//-/_}" ); then RESULTS+=("PASS  $1 ($((SECONDS-t0))s)")
  else RESULTS+=("FAIL  $1 ($((SECONDS-t0))s)"); FAILED+=("$1"); fi; }

sc_herd() {
  head -c $((BIG << 20)) /dev/urandom >"$RT/herd.bin"
  local d; d=$(push_upstream library/herd "$RT/herd.bin") || fail "pushing the herd blob to the upstream"
  local before; before=$(upstream_gets "$d")
  "$RT/cc" get -urls "${R[1]},${R[2]},${R[3]}" -n 16 -repo library/herd -digest "$d" -size $((BIG << 20)) ||
    fail "not every one of 48 clients got the blob's bytes"
  local n; for _ in $(seq 100); do n=$(( $(upstream_gets "$d") - before )); [ "$n" -ge 1 ] && break; sleep 0.1; done
  [ "$n" = 1 ] || fail "48 clients on 3 replicas made $n upstream GETs of $d, want 1"
  in_bucket "$d" || fail "the owner did not write $d to the bucket (within 30s)"
  echo "  48 clients verified $BIG MiB; upstream GETs: 1; the blob is in the bucket"
  echo "$d" >"$RT/herd.digest"
}

# A Range read on every replica while the blob is still being filled: the
# right bytes, and still one upstream GET.
sc_range() {
  head -c $((64 << 20)) /dev/urandom >"$RT/range.bin"
  local d; d=$(push_upstream library/range "$RT/range.bin") || fail "pushing the blob to the upstream"
  "$RT/cc" get -urls "${R[1]}" -n 1 -repo library/range -digest "$d" >"$RT/range-full.out" 2>&1 & local full=$!
  local i from len=1000000
  for i in 1 2 3; do
    from=$(( (i * 17 + 3) << 20 ))
    curl -sf -r "$from-$((from + len - 1))" "${R[i]}/v2/library/range/blobs/$d" -o "$RT/range-$i.part" || fail "Range GET on r$i"
    cmp -s "$RT/range-$i.part" <(tail -c +$((from + 1)) "$RT/range.bin" | head -c $len) || fail "r$i: bytes $from-$((from + len - 1)) are not the blob's"
  done
  wait "$full" || fail "the full read on r1: $(cat "$RT/range-full.out")"
  local n; for _ in $(seq 100); do n=$(upstream_gets "$d"); [ "$n" -ge 1 ] && break; sleep 0.1; done
  [ "$n" = 1 ] || fail "upstream GETs of $d: $n, want 1"
  echo "  Range reads on r1, r2, r3 during the fill: right bytes; one upstream GET"
}

# manifest_digest BASE REPO REF : the digest a replica answers for REPO:REF.
manifest_digest() { curl -sf -o /dev/null -D - -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "$1/v2/$2/manifests/$3" | tr -d '\r' | sed -n 's/^Docker-Content-Digest: //Ip'; }

sc_push_pull() {
  local out m1 l1 m2 i
  out=$("$RT/cc" push -url "${R[1]}" -repo team/app -tag v1 -size 16MiB -chunk 4MiB) || fail "push through r1"
  read -r _ m1 l1 _ <<<"$out"
  # pull through r2 and r3 at once: the manifest by tag, then the layer, verified
  ( crane --insecure pull "127.0.0.1:${P[2]}/team/app:v1" "$RT/pp2.tar" ) & local c2=$!
  ( crane --insecure pull "127.0.0.1:${P[3]}/team/app:v1" "$RT/pp3.tar" ) & local c3=$!
  "$RT/cc" get -urls "${R[2]},${R[3]}" -n 2 -repo team/app -digest "$l1" -size $((16 << 20)) || fail "layer through r2/r3"
  wait "$c2" || fail "crane pull through r2"; wait "$c3" || fail "crane pull through r3"
  for i in 2 3; do [ "$(manifest_digest "${R[i]}" team/app v1)" = "$m1" ] || fail "r$i: team/app:v1 is not $m1"; done
  out=$("$RT/cc" push -url "${R[2]}" -repo team/app -tag v1 -size 1MiB -chunk 1MiB) || fail "overwriting push through r2"
  read -r _ m2 _ _ <<<"$out"
  for i in 3 1; do local got; got=$(manifest_digest "${R[i]}" team/app v1)
    [ "$got" = "$m2" ] || fail "right after the overwrite on r2, r$i answers team/app:v1 = ${got:-nothing}, want $m2"; done
  crane --insecure pull "127.0.0.1:${P[3]}/team/app:v1" "$RT/pp3b.tar" || fail "pull of the overwritten tag through r3"
  echo "$m2" >"$RT/app.digest"
  echo "  pushed on r1 ($m1), pulled on r2+r3; overwritten on r2 ($m2), read on r3 and r1"
}

sc_tag_race() {
  local out cfg layer round a b i
  out=$("$RT/cc" push -url "${R[1]}" -repo team/race -tag base -size 1KiB -chunk 1KiB) || fail "base push"
  read -r _ _ layer _ <<<"$out"
  cfg=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "${R[1]}/v2/team/race/manifests/base" | grep -o '"config":{[^}]*}')
  for round in $(seq 10); do
    for w in a b; do
      printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",%s,"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":1024}],"annotations":{"writer":"%s-%s"}}' \
        "$cfg" "$layer" "$w" "$round" >"$RT/race-$w.json"
    done
    a=sha256:$(sha256sum "$RT/race-a.json" | cut -d' ' -f1); b=sha256:$(sha256sum "$RT/race-b.json" | cut -d' ' -f1)
    curl -s -o "$RT/race-a.out" -w '%{http_code}' -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
      --data-binary @"$RT/race-a.json" "${R[1]}/v2/team/race/manifests/t" >"$RT/race-a.code" & local pa=$!
    curl -s -o "$RT/race-b.out" -w '%{http_code}' -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
      --data-binary @"$RT/race-b.json" "${R[2]}/v2/team/race/manifests/t" >"$RT/race-b.code" & local pb=$!
    wait "$pa" "$pb" || true
    local ca cb; ca=$(cat "$RT/race-a.code"); cb=$(cat "$RT/race-b.code")
    [ "$ca" = 201 ] || [ "$cb" = 201 ] || fail "round $round: neither tag write succeeded (r1 $ca: $(cat "$RT/race-a.out"); r2 $cb: $(cat "$RT/race-b.out"))"
    local first=""; for i in 1 2 3; do
      local got; got=$(manifest_digest "${R[i]}" team/race t)
      [ "$got" = "$a" ] || [ "$got" = "$b" ] || fail "round $round: r$i answers ${got:-nothing}, neither write ($a, $b)"
      [ -z "$first" ] || [ "$got" = "$first" ] || fail "round $round: replicas disagree: $first vs r$i $got"
      first=$got; done
    # a write that answered 201 but is not the winner must have been first: the other one answered 201 too
    if [ "$first" = "$a" ] && [ "$ca" != 201 ]; then fail "round $round: r1's write won but answered $ca"; fi
    if [ "$first" = "$b" ] && [ "$cb" != 201 ]; then fail "round $round: r2's write won but answered $cb"; fi
  done
  echo "  10 rounds: one winner, the same on all three replicas"
}

sc_conformance() {
  local out=$RT/conformance rc; mkdir -p "$out"; cd "$out"
  set +e
  env OCI_ROOT_URL=http://$LB OCI_REGISTRY=$LB OCI_TLS=disabled \
    OCI_REPO1=conformance/repo1 OCI_REPO2=conformance/repo2 OCI_NAMESPACE=conformance/repo1 \
    OCI_CROSSMOUNT_NAMESPACE=conformance/repo2 OCI_RESULTS_DIR="$out/results" OCI_VERSION=1.1 OCI_LOG=warn \
    conformance >"$out/output.log" 2>&1
  rc=$?; set -e
  sed -n '/^OCI Conformance Result/,/Total/p' "$out/output.log"
  local fails; fails=$(grep -E '^  [A-Za-z].*\.\.+:\s+(FAIL|Error)$' "$out/output.log" || true)
  if [ -n "$fails" ] || ! grep -q '^OCI Conformance Result: Pass' "$out/output.log"; then
    echo "$fails"; grep -B2 -A12 -E '\[FAIL\]|Expected' "$out/output.log" | head -80
    fail "conformance through the balancer: suite rc=$rc; full log $out/output.log"; fi
}

# received_from PORT : "PID LOCALPORT BYTES" for each established connection to
# 127.0.0.1:PORT (bytes received so far).
received_from() { ss -Htnpi state established "( dport = :$1 )" 2>/dev/null | awk '
  /users:/ { match($0, /pid=[0-9]+/); pid = substr($0, RSTART+4, RLENGTH-4); split($3, a, ":"); lp = a[2] }
  /bytes_received:/ { match($0, /bytes_received:[0-9]+/); print pid, lp, substr($0, RSTART+15, RLENGTH-15) }'; }
# downloading_from PORT : the PIDs receiving bytes from 127.0.0.1:PORT right now (an idle
# keep-alive connection of an earlier fill does not count).
downloading_from() { local a b; a=$(received_from "$1"); sleep 0.2; b=$(received_from "$1")
  join <(sort -k2 <<<"$a" | awk '{print $2, $1, $3}' | sort) <(awk '{print $2, $3}' <<<"$b" | sort) | awk '$4 > $3 {print $2}' | sort -u; }

sc_kill_fill() {
  ensure_all || fail "a replica does not start"
  head -c $((128 << 20)) /dev/urandom >"$RT/fill.bin"
  local d; d=$(push_upstream library/fillkill "$RT/fill.bin") || fail "pushing the blob to the upstream"
  "$RT/cc" get -urls "http://$LB" -n 12 -retries 6 -repo library/fillkill -digest "$d" -size $((128 << 20)) >"$RT/kill-fill.out" 2>&1 &
  local cc=$! owner="" p
  # The filler is the replica receiving bytes from the upstream.
  for _ in $(seq 150); do
    for p in $(downloading_from "$SLOW_PORT"); do owner=$(replica_of "$p"); [ -n "$owner" ] && break; done
    [ -n "$owner" ] && break
  done
  [ -n "$owner" ] || { kill "$cc"; fail "no replica downloaded from the upstream within 30s"; }
  kill9 "$owner"; echo "  killed r$owner (pid $p) while it filled $d"
  wait "$cc" || fail "clients through the balancer after the kill: $(cat "$RT/kill-fill.out")"
  cat "$RT/kill-fill.out"
  # The upstream logs a GET when it ends: the killed owner's ends when the
  # upstream notices its client is gone.
  local n; for _ in $(seq 300); do n=$(upstream_gets "$d"); [ "$n" -ge 2 ] && break; sleep 0.1; done
  [ "$n" = 2 ] || fail "upstream GETs of $d: $n, want 2 (the killed owner's and the new owner's)"
  local i; for i in 1 2 3; do [ "$i" = "$owner" ] && continue
    [ "$(curl -s -o /dev/null -w '%{http_code}' -I "${R[i]}/v2/library/fillkill/blobs/$d")" = 200 ] || fail "r$i has no $d after the fill"; done
  in_bucket "$d" || fail "the new owner did not write $d to the bucket (within 30s)"
  start_replica "$owner" || fail "r$owner did not restart"
  "$RT/cc" get -urls "${R[owner]}" -n 1 -repo library/fillkill -digest "$d" -size $((128 << 20)) || fail "restarted r$owner does not serve $d"
  [ "$(upstream_gets "$d")" = 2 ] || fail "the restarted replica fetched $d from the upstream again"
  local c0; c0=$(grep -c "127.0.0.1:${P[owner]}\$" "$RT/lb.log" || true)
  "$RT/cc" get -urls "http://$LB,http://$LB,http://$LB" -n 1 -repo library/fillkill -digest "$d" >/dev/null || fail "reads through the balancer after the restart"
  [ "$(grep -c "127.0.0.1:${P[owner]}\$" "$RT/lb.log")" -gt "$c0" ] || fail "the balancer sent nothing to the restarted r$owner"
  echo "$d" >"$RT/fill.digest"
  echo "  the new owner completed the fill (2 upstream GETs in all); r$owner restarted, ready, serves it"
}

sc_kill_push() {
  ensure_all || fail "a replica does not start"
  rm -f "$RT/pk" "$RT/pk.go"
  "$RT/cc" push -url "http://$LB" -repo team/pushkill -tag v1 -size 48MiB -chunk 4MiB -pause-after 5 -pause-file "$RT/pk" \
    >"$RT/kill-push.out" 2>"$RT/kill-push.err" &
  local cc=$!
  for _ in $(seq 600); do [ -f "$RT/pk" ] && break; kill -0 "$cc" 2>/dev/null || break; sleep 0.05; done
  [ -f "$RT/pk" ] || fail "the push did not reach its 6th chunk: $(cat "$RT/kill-push.err")"
  # Kill the replica receiving the 6th PATCH, halfway through its body.
  local last victim i; last=$(grep '^conn ' "$RT/lb.log" | tail -1 | awk '{print $3}')
  for i in 1 2 3; do [ "127.0.0.1:${P[i]}" = "$last" ] && victim=$i; done
  [ -n "$victim" ] || fail "the balancer's last connection ($last) is to no replica"
  kill9 "$victim"; echo "  killed r$victim while it received the 6th PATCH"
  touch "$RT/pk.go"
  wait "$cc" || fail "the push after the kill: $(cat "$RT/kill-push.err")"
  cat "$RT/kill-push.err"
  grep -q 'retrying' "$RT/kill-push.err" || fail "the client saw no failed request: the kill did not interrupt the PATCH"
  local m l; read -r _ m l _ <"$RT/kill-push.out"
  start_replica "$victim" || fail "r$victim did not restart"
  for i in 1 2 3; do
    [ "$(manifest_digest "${R[i]}" team/pushkill v1)" = "$m" ] || fail "r$i: team/pushkill:v1 is not $m"
  done
  "$RT/cc" get -urls "${R[1]},${R[2]},${R[3]}" -n 1 -repo team/pushkill -digest "$l" -size $((48 << 20)) || fail "the pushed layer"
  echo "$m" >"$RT/pushkill.digest"
  echo "  push resumed and completed ($m); r$victim restarted and serves it"
}

sc_durable() {
  local i d
  ensure_all || fail "a replica does not start"
  for i in 1 2 3; do
    wait_ready "${R[i]}" 1 || fail "r$i is not ready"
    if [ -f "$RT/app.digest" ]; then [ "$(manifest_digest "${R[i]}" team/app v1)" = "$(cat "$RT/app.digest")" ] || fail "r$i lost team/app:v1"; fi
    if [ -f "$RT/pushkill.digest" ]; then [ "$(manifest_digest "${R[i]}" team/pushkill v1)" = "$(cat "$RT/pushkill.digest")" ] || fail "r$i lost team/pushkill:v1"; fi
  done
  for f in herd fill; do [ -f "$RT/$f.digest" ] || continue; d=$(cat "$RT/$f.digest")
    local repo=library/herd; [ $f = fill ] && repo=library/fillkill
    for i in 1 2 3; do [ "$(curl -s -o /dev/null -w '%{http_code}' -I "${R[i]}/v2/$repo/blobs/$d")" = 200 ] || fail "r$i lost $d"; done
  done
  echo "  everything acknowledged reads back from every replica"
}

sc_dockerd() {
  [ "$(id -u)" = 0 ] || unavailable_sc "dockerd needs root" || return 0
  for c in dockerd docker runc; do command -v $c >/dev/null || { unavailable_sc "$c is not installed"; return 0; }; done
  { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || { unavailable_sc "busybox-static is not installed"; return 0; }
  bash .ci/make-image.sh "$UP" library/busybox docker.io >"$RT/make-image.log" 2>&1 || fail "make-image.sh: $(tail -5 "$RT/make-image.log")"
  local DX=$RT/docker; mkdir -p "$DX/cfg"
  printf '{"registry-mirrors": ["http://%s"], "insecure-registries": ["%s"]}\n' "$LB" "$LB" >"$DX/daemon.json"
  local DK=(env DOCKER_CONFIG="$DX/cfg" docker -H "unix://$DX/docker.sock")
  [ -x /usr/bin/docker ] && DK[2]=/usr/bin/docker
  start_bg dockerd dockerd --config-file "$DX/daemon.json" --data-root "$DX/data" --exec-root "$DX/exec" \
    --pidfile "$DX/docker.pid" -H "unix://$DX/docker.sock" --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs
  local ok=; for _ in $(seq 240); do "${DK[@]}" version >/dev/null 2>&1 && ok=1 && break
    kill -0 "$(cat "$RT/dockerd.pid" 2>/dev/null)" 2>/dev/null || break; sleep 0.25; done
  [ -n "$ok" ] || { tail -15 "$RT/dockerd.log"; unavailable_sc "dockerd did not start (log $RT/dockerd.log)"; return 0; }
  local before; before=$(grep -c '^conn ' "$RT/lb.log")
  "${DK[@]}" pull busybox || fail "docker pull busybox through the balancer"
  local out; out=$("${DK[@]}" run --rm --network=none busybox cat /etc/berth-e2e-origin) || fail "docker run busybox"
  [ "$out" = docker.io ] || fail "container printed '$out', want docker.io"
  [ "$(grep -c '^conn ' "$RT/lb.log")" -gt "$before" ] || fail "dockerd did not go through the balancer"
  "${DK[@]}" rmi -f busybox >/dev/null 2>&1 || true
  stop_bg dockerd
  echo "  dockerd pulled busybox through the balancer and ran it"
}
# Last (it stops the bucket): with the bucket gone, mirrored content on the
# replicas' disks is still served, as docs/design.md says.
sc_bucket_down() {
  [ -f "$RT/herd.digest" ] || fail "needs the herd scenario first"
  local d i; d=$(cat "$RT/herd.digest")
  stop_bg weed
  for i in 1 2 3; do
    "$RT/cc" get -urls "${R[i]}" -n 1 -repo library/herd -digest "$d" -size $((BIG << 20)) ||
      fail "with the bucket down, r$i does not serve $d from its disk"
  done
  echo "  the bucket down, every replica serves the mirrored blob from its disk"
}
sc_s3_go() {
  BERTH_S3_TESTS=1 go test -count=1 -run S3 ./internal/bucket/ || fail "the bucket driver's tests against SeaweedFS"
}
unavailable_sc() { if [ "$REQUIRED" = 1 ]; then fail "$1 (BERTH_E2E_REQUIRED=1)"; fi; echo "  SKIP: $1"; return 1; }

run herd
# The conformance suite through the balancer runs beside the scenarios that
# kill nothing.
( RESULTS=(); run conformance; printf '%s\n' "${RESULTS[@]}" >"$RT/conformance.result" ) >"$RT/conformance.out" 2>&1 & CONF=$!
run push-pull
run range
run tag-race
wait "$CONF" || true
cat "$RT/conformance.out"
while read -r line; do [ -n "$line" ] || continue; RESULTS+=("$line"); if [[ $line == FAIL* ]]; then FAILED+=(conformance); fi; done <"$RT/conformance.result"
run kill-fill
run kill-push
run durable
run dockerd
run s3-go
run bucket-down

echo "--- cluster e2e results"
printf '  %s\n' "${RESULTS[@]}"
if [ ${#FAILED[@]} -gt 0 ]; then
  for i in 1 2 3; do echo "r$i log (last 10 warnings/errors):"; grep -E '"level":"(warn|error)"' "$RT/r$i.log" | tail -10 | sed 's/^/  | /'; done
  fail "cluster e2e: ${FAILED[*]} (logs in $RT)"
fi
echo "cluster e2e: PASS"
