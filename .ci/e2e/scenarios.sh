# The scenarios of .ci/e2e.sh (sourced). Each sc_* function prints its steps;
# scenario() in lib-e2e.sh turns the outcome into PASS / FAIL / SKIP.
# Globals from e2e.sh: B (berth host:port), BLOG, UP1/UP1_LOG (docker.io role),
# UP2/UP2_LOG (registry.example.test), DIG[d:TAG]/DIG[x:TAG] (upstream digests), DEAD.

XN=registry.example.test
BB=library/busybox
# The scenarios that ran far enough for "upstream down" to repeat their pulls.
DOCKER_UP=0 CONTAINERD_UP=0 PODMAN_UP=0

# --- 0. config: the shipped sample config starts --------------------------------
sc_config() {
  local port; port=$(free_port)
  start_bg berth-sample "$ROOT/bin/berth" serve --config "$DEPLOY/berth.yaml" --addr "127.0.0.1:$port" \
    --data "$RT/berth-sample-data" --log-format json
  if wait_http "http://127.0.0.1:$port/v2/" 10 2>/dev/null; then echo "  ok   berth serve --config deploy/berth.yaml starts"
  else echo "  FAIL berth serve --config deploy/berth.yaml did not start:"; sed 's/^/    | /' "$RT/berth-sample.log"; S_FAILED=1; fi
  stop_bg berth-sample
  step "deploy/docker/daemon.json is valid JSON" jq -e '."registry-mirrors"[0]' "$DEPLOY/docker/daemon.json"
}

# --- 1. dockerd --------------------------------------------------------------------
DX=$RT/docker
DK=(env DOCKER_CONFIG="$DX/cfg" docker -H "unix://$DX/docker.sock")
[ -x /usr/bin/docker ] && DK[2]=/usr/bin/docker   # Debian's client matches Debian's dockerd
start_dockerd() {
  mkdir -p "$DX/cfg"
  render "$DEPLOY/docker/daemon.json" >"$DX/daemon.json"
  start_bg dockerd dockerd --config-file "$DX/daemon.json" --data-root "$DX/data" --exec-root "$DX/exec" \
    --pidfile "$DX/docker.pid" -H "unix://$DX/docker.sock" \
    --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs
  local i; for i in $(seq 120); do "${DK[@]}" version >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$RT/dockerd.pid" 2>/dev/null)" 2>/dev/null || break; sleep 0.25; done
  tail -n 15 "$RT/dockerd.log" | sed 's/^/    | /'; return 1
}
sc_docker() {
  need_root dockerd && need dockerd docker runc || return
  start_dockerd || { unavailable "dockerd did not start (log $RT/dockerd.log)"; return; }
  echo "  dockerd $(dockerd --version | awk '{print $3}' | tr -d ,), mirror http://$B"
  local m; m=$(mark "$BLOG")
  step "docker pull busybox (via --registry-mirror)" "${DK[@]}" pull busybox || return
  bexpect "berth served the manifest of library/busybox:latest from docker.io" "$m" \
    '.method=="GET" and .kind=="manifest" and .repo=="library/busybox" and .route=="docker.io" and .status==200'
  bexpect "berth served blobs of library/busybox from docker.io" "$m" \
    '.method=="GET" and .kind=="blob" and .repo=="library/busybox" and .route=="docker.io" and .status==200'
  equal "pulled digest is upstream docker.io's latest" \
    "$("${DK[@]}" image inspect busybox --format '{{index .RepoDigests 0}}' 2>&1)" "busybox@${DIG[d:latest]}"
  m=$(mark "$BLOG")
  step "docker pull busybox:multi (OCI index via mirror)" "${DK[@]}" pull busybox:multi || return
  bexpect "berth served the index library/busybox:multi from docker.io" "$m" \
    '(.method=="GET" or .method=="HEAD") and .kind=="manifest" and .ref=="multi" and .route=="docker.io" and .status==200'
  check "busybox:multi resolved to docker.io's index digest" \
    '"${DK[@]}" image inspect busybox:multi --format "{{json .RepoDigests}}" | grep -q "busybox@${DIG[d:multi]}"' \
    "$("${DK[@]}" image inspect busybox:multi --format '{{json .RepoDigests}}' 2>&1)"
  step "docker run --rm --network=none busybox" "${DK[@]}" run --rm --network=none busybox cat /etc/berth-e2e-origin &&
    equal "container output" "$(cat "$OUT")" "docker.io"
  m=$(mark "$BLOG")
  step "docker tag + push $B/team/app:1" bash -c '"$@" tag busybox "$0/team/app:1" && "$@" push "$0/team/app:1"' "$B" "${DK[@]}" || return
  bexpect "berth stored the pushed manifest locally" "$m" \
    '.method=="PUT" and .kind=="manifest" and .repo=="team/app" and .route=="local" and .status==201'
  step "docker rmi (all images)" "${DK[@]}" rmi busybox busybox:multi "$B/team/app:1" || return
  check "no images left in dockerd" '[ -z "$("${DK[@]}" images -q)" ]' "$("${DK[@]}" images 2>&1)"
  # Background fills of the first pulls (prefetched layers) must end before
  # counting: wait on berth's own gauge, not on the clock.
  check "no upstream download still running" wait_no_fills "in flight: $(metric berth_upstream_fills_in_flight)"
  local u; u=$(mark "$UP1_LOG"); m=$(mark "$BLOG")
  step "docker pull busybox again" "${DK[@]}" pull busybox || return
  step "docker pull busybox:multi again" "${DK[@]}" pull busybox:multi || return
  step "docker pull $B/team/app:1 (local push, pulled back)" "${DK[@]}" pull "$B/team/app:1" || return
  bexpect "the second pulls fetched blobs from berth" "$m" '.method=="GET" and .kind=="blob" and .route=="docker.io" and .status==200'
  check "second pulls caused zero upstream blob GETs" '[ "$(upcount "$UP1_LOG" "$u" "^GET /v2/[^ ]*/blobs/")" = 0 ]' \
    "$(uplog "$UP1_LOG" "$u")"
  bexpect "team/app:1 came from berth's local storage" "$m" '.kind=="manifest" and .repo=="team/app" and .route=="local" and .status==200'
  step "docker run the pulled-back team/app:1" "${DK[@]}" run --rm --network=none "$B/team/app:1" cat /etc/berth-e2e-origin &&
    equal "container output" "$(cat "$OUT")" "docker.io"
  DOCKER_UP=1
  # deploy/Dockerfile: the image builds offline and serves, and is a drop-in
  # for registry:2. Whatever fails, what it started is removed, so that the
  # upstream-down scenario finds dockerd with no images of its own.
  docker_berth_image
  "${DK[@]}" rm -f berth-e2e berth-e2e-tut berth-e2e-tut2 >/dev/null 2>&1
  "${DK[@]}" volume rm berth-e2e-data >/dev/null 2>&1
  "${DK[@]}" rmi berth:e2e "localhost:${TUT_PORT:-0}/my-ubuntu-image" >/dev/null 2>&1
  check "the berth image, its containers and volume are removed" \
    '[ -z "$("${DK[@]}" ps -aq)" ] && ! "${DK[@]}" volume inspect berth-e2e-data >/dev/null 2>&1 && ! "${DK[@]}" image inspect berth:e2e >/dev/null 2>&1' \
    "$("${DK[@]}" ps -a 2>&1; "${DK[@]}" volume ls 2>&1; "${DK[@]}" images 2>&1)"
}
# docker_berth_image : build deploy/Dockerfile, run it configured by the
# environment only, then follow registry:2's tutorial with it.
docker_berth_image() {
  step "docker build -f deploy/Dockerfile" env DOCKER_BUILDKIT=0 "${DK[@]}" build -q -f "$ROOT/deploy/Dockerfile" -t berth:e2e "$ROOT" || return
  local cport; cport=$(free_port)
  step "docker run -e BERTH_ADDR=127.0.0.1:$cport berth:e2e (host network)" \
    "${DK[@]}" run -d --name berth-e2e --network=host -e BERTH_ADDR="127.0.0.1:$cport" berth:e2e || return
  check "the berth container answers /v2/ on BERTH_ADDR" "wait_http http://127.0.0.1:$cport/v2/ 20" "$("${DK[@]}" logs berth-e2e 2>&1 | tail -5)"
  step "crane copy into the berth container" crane --insecure copy "$B/team/app:1" "127.0.0.1:$cport/team/app:1"
  step "docker rm -f berth-e2e" "${DK[@]}" rm -f berth-e2e

  # registry:2's tutorial with berth:e2e in registry:2's place (a free port
  # rather than 5001, which another run may hold; host network: this dockerd
  # has no bridge).
  TUT_PORT=$(free_port)
  local t=localhost:$TUT_PORT/my-ubuntu-image vol=berth-e2e-data
  step "docker run --restart unless-stopped -e REGISTRY_HTTP_ADDR=0.0.0.0:$TUT_PORT -v $vol:/data berth:e2e" \
    "${DK[@]}" run -d --name berth-e2e-tut --network=host --restart unless-stopped \
    -e REGISTRY_HTTP_ADDR="0.0.0.0:$TUT_PORT" -v "$vol:/data" berth:e2e || return
  check "berth listens on REGISTRY_HTTP_ADDR's port $TUT_PORT" "wait_http http://127.0.0.1:$TUT_PORT/v2/ 20" \
    "$("${DK[@]}" logs berth-e2e-tut 2>&1 | tail -5)" || return
  equal "restart policy" "$("${DK[@]}" inspect -f '{{.HostConfig.RestartPolicy.Name}}' berth-e2e-tut 2>&1)" unless-stopped
  step "docker tag busybox $t && docker push $t (one-element name)" \
    bash -c '"$@" tag busybox "$0" && "$@" push "$0"' "$t" "${DK[@]}" || return
  local pushed; pushed=$(grep -oE 'digest: sha256:[0-9a-f]{64}' "$OUT" | cut -d' ' -f2)
  check "docker push printed the manifest digest" '[ -n "$pushed" ]' "$(cat "$OUT")"
  step "docker rmi + docker pull $t" bash -c '"$@" rmi "$0" && "$@" pull "$0"' "$t" "${DK[@]}" || return
  check "pulled-back digest is the pushed one" \
    '"${DK[@]}" image inspect "$t" --format "{{json .RepoDigests}}" | grep -qF "\"$t@$pushed\""' \
    "$("${DK[@]}" image inspect "$t" --format '{{json .RepoDigests}}' 2>&1)"
  step "GET /v2/_catalog" curl -sf "http://127.0.0.1:$TUT_PORT/v2/_catalog" &&
    equal "catalog" "$(jq -c .repositories "$OUT")" '["my-ubuntu-image"]'
  local served; served=$("${DK[@]}" logs berth-e2e-tut 2>&1 | jq -Rrc 'fromjson? | select(.message=="berth serving") | "\(.addr) \(.data)"')
  # (Go's listener on 0.0.0.0 is dual-stack and calls itself [::])
  check "berth's start-up line: all addresses, port $TUT_PORT, data in /data" \
    '[ "$served" = "[::]:$TUT_PORT /data" ] || [ "$served" = "0.0.0.0:$TUT_PORT /data" ]' "$served"
  local mp; mp=$("${DK[@]}" volume inspect -f '{{.Mountpoint}}' "$vol" 2>&1)
  check "the pushed manifest is a file in volume $vol" '[ -n "$pushed" ] && [ -s "$mp/blobs/sha256/${pushed:7:2}/${pushed:7}" ]' \
    "$(ls -R "$mp" 2>&1 | head -20)"
  # A new container on the same volume, with a CMD of its own that changes
  # the address: the data is still read from /data.
  step "docker rm -f berth-e2e-tut" "${DK[@]}" rm -f berth-e2e-tut
  local p2; p2=$(free_port)
  step "docker run -v $vol:/data berth:e2e serve --addr 127.0.0.1:$p2" \
    "${DK[@]}" run -d --name berth-e2e-tut2 --network=host -v "$vol:/data" berth:e2e serve --addr "127.0.0.1:$p2" || return
  check "the new container answers /v2/" "wait_http http://127.0.0.1:$p2/v2/ 20" "$("${DK[@]}" logs berth-e2e-tut2 2>&1 | tail -5)" || return
  step "crane digest 127.0.0.1:$p2/my-ubuntu-image (from the volume)" crane --insecure digest "127.0.0.1:$p2/my-ubuntu-image" &&
    equal "digest served from the volume" "$(cat "$OUT")" "$pushed"
}

# --- 2. containerd + ctr with hosts.toml -------------------------------------------
CX=$RT/containerd
CTR=(ctr --address "$CX/containerd.sock" --namespace berth-e2e)
start_containerd() { local root=$1
  mkdir -p "$CX/certs.d/docker.io" "$CX/certs.d/$XN"
  cat >"$CX/config.toml" <<TOML
version = 2
root = "$root"
state = "$CX/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CX/containerd.sock"
[ttrpc]
  address = "$CX/containerd.sock.ttrpc"
[debug]
  address = "$CX/debug.sock"
TOML
  # The hosts.toml files are deploy/'s, with berth's address; the fallback
  # server is a dead port so that nothing bypasses berth unnoticed.
  render -e "s#^server = .*#server = \"http://$DEAD\"#" "$DEPLOY/containerd/certs.d/docker.io/hosts.toml" \
    >"$CX/certs.d/docker.io/hosts.toml"
  render -e "s#ghcr\.io#$XN#g" -e "s#^server = .*#server = \"http://$DEAD\"#" "$DEPLOY/containerd/certs.d/ghcr.io/hosts.toml" \
    >"$CX/certs.d/$XN/hosts.toml"
  start_bg containerd containerd --config "$CX/config.toml"
  local i; for i in $(seq 120); do "${CTR[@]}" version >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$RT/containerd.pid" 2>/dev/null)" 2>/dev/null || break; sleep 0.25; done
  tail -n 15 "$RT/containerd.log" | sed 's/^/    | /'; return 1
}
# ctr_pulls : the pulls scenario 2 makes, and scenario 7 repeats.
ctr_pulls() {
  local P=("${CTR[@]}" images pull --snapshotter native --hosts-dir "$CX/certs.d")
  step "ctr pull docker.io/$BB:oci (single platform)" "${P[@]}" --platform linux/amd64 "docker.io/$BB:oci" || return
  # --debug: ctr (the resolver runs in the client) logs each request URL
  step "ctr pull $XN/$BB:latest (single platform)" "${CTR[@]}" --debug images pull --snapshotter native \
    --hosts-dir "$CX/certs.d" --platform linux/amd64 "$XN/$BB:latest" || return
  check "ctr sent its requests to berth with ?ns=$XN" \
    'grep -qE "url=\"?http://$B/v2/$BB/manifests/[^ ]*[?&]ns=$XN" "$OUT"' "$(grep -E 'url=' "$OUT" | tail -n 5)"
  step "ctr pull --all-platforms $XN/$BB:multi" "${P[@]}" --all-platforms "$XN/$BB:multi" || return
  local ls; ls=$("${CTR[@]}" images ls 2>&1)
  equal "containerd's $XN/$BB:latest is registry.example.test's" \
    "$(awk -v r="$XN/$BB:latest" '$1==r {print $3}' <<<"$ls")" "${DIG[x:latest]}"
  equal "containerd's $XN/$BB:multi is registry.example.test's" \
    "$(awk -v r="$XN/$BB:multi" '$1==r {print $3}' <<<"$ls")" "${DIG[x:multi]}"
  equal "containerd's docker.io/$BB:oci is docker.io's" \
    "$(awk -v r="docker.io/$BB:oci" '$1==r {print $3}' <<<"$ls")" "${DIG[d:oci]}"
}
sc_containerd() {
  need_root containerd && need containerd ctr runc || return
  start_containerd "$CX/root" || { unavailable "containerd did not start (log $RT/containerd.log)"; return; }
  echo "  $(containerd --version | awk '{print $1, $3}'), hosts.toml from deploy/containerd/certs.d"
  local m u1 u2; m=$(mark "$BLOG"); u1=$(mark "$UP1_LOG"); u2=$(mark "$UP2_LOG")
  ctr_pulls || return
  # berth's request log has the path, not the query; an unprefixed path
  # (/v2/library/busybox/...) routed to registry.example.test proves that
  # berth honoured ?ns=registry.example.test, since without it the default
  # upstream (docker.io) would own library/busybox.
  bexpect "?ns=$XN: unprefixed manifest requests routed to $XN" "$m" \
    ".kind==\"manifest\" and .repo==\"$BB\" and (.path|startswith(\"/v2/$BB/\")) and .route==\"$XN\" and .status==200" 2
  bexpect "?ns=$XN: unprefixed blob requests routed to $XN" "$m" \
    ".kind==\"blob\" and (.path|startswith(\"/v2/$BB/\")) and .route==\"$XN\" and .status==200"
  bexpect "?ns=docker.io: :oci routed to docker.io" "$m" \
    ".kind==\"manifest\" and .ref==\"oci\" and .route==\"docker.io\" and .status==200"
  if blog "$m" '.kind!="base"' | jq -e 'has("query") or has("ns") or (.path|contains("ns="))' >/dev/null 2>&1; then
    bexpect "berth's log shows ?ns= on the requests" "$m" '(.query // .ns // .path) | tostring | contains("'"$XN"'")'
  fi
  upexpect "$XN's registry served manifests/latest" "$UP2_LOG" "$u2" "^GET /v2/$BB/manifests/latest "
  upexpect "$XN's registry served manifests/multi" "$UP2_LOG" "$u2" "^GET /v2/$BB/manifests/multi "
  upexpect "$XN's registry served blobs" "$UP2_LOG" "$u2" "^GET /v2/$BB/blobs/sha256:"
  check "$XN's registry got no request for :oci (that was docker.io's)" \
    '[ "$(upcount "$UP2_LOG" "$u2" "/manifests/oci ")" = 0 ]' "$(uplog "$UP2_LOG" "$u2")"
  upexpect "docker.io's registry served manifests/oci" "$UP1_LOG" "$u1" "^GET /v2/$BB/manifests/oci "
  check "docker.io's registry got no request for :multi (that was $XN's)" \
    '[ "$(upcount "$UP1_LOG" "$u1" "/manifests/multi ")" = 0 ]' "$(uplog "$UP1_LOG" "$u1")"
  step "ctr run $XN/$BB:latest" "${CTR[@]}" run --rm --snapshotter native "$XN/$BB:latest" berth-e2e-c1 cat /etc/berth-e2e-origin &&
    equal "container output" "$(cat "$OUT")" "$XN"
  CONTAINERD_UP=1
}

# --- 3. podman with registries.conf --------------------------------------------------
PX=$RT/podman
POD=(env CONTAINERS_REGISTRIES_CONF="$PX/registries.conf" podman --root "$PX/root" --runroot "$PX/run"
     --storage-driver=vfs --cgroup-manager=cgroupfs --events-backend=file --tmpdir "$PX/tmp")
PODRUN=(run --rm --network=none --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
sc_podman() {
  need_root podman && need podman runc || return
  mkdir -p "$PX/tmp"
  # deploy/podman/registries.conf with berth's address, ghcr.io's block for
  # registry.example.test, and dead primary locations.
  render -e "s#ghcr\.io#$XN#g" -e "s#^location = \"docker\.io\"#location = \"$DEAD\"#" \
    -e "s#^location = \"$XN\"#location = \"$DEAD\"#" "$DEPLOY/podman/registries.conf" >"$PX/registries.conf"
  "${POD[@]}" info >"$PX/info.log" 2>&1 || { sed 's/^/    | /' "$PX/info.log" | tail; unavailable "podman does not work here"; return; }
  echo "  $(podman --version), registries.conf from deploy/podman"
  local m; m=$(mark "$BLOG")
  step "podman pull docker.io/$BB:latest (registries.conf mirror)" "${POD[@]}" pull "docker.io/$BB:latest" || return
  bexpect "berth served library/busybox:latest from docker.io" "$m" \
    '.kind=="manifest" and .repo=="library/busybox" and .route=="docker.io" and .status==200'
  equal "podman's image digest is docker.io's latest" \
    "$("${POD[@]}" image inspect "docker.io/$BB:latest" --format '{{.Digest}}' 2>&1)" "${DIG[d:latest]}"
  m=$(mark "$BLOG")
  step "podman pull $XN/$BB:oci (mirror with path prefix $B/$XN)" "${POD[@]}" pull "$XN/$BB:oci" || return
  bexpect "berth routed /v2/$XN/$BB/... to $XN" "$m" \
    ".kind==\"manifest\" and (.path|startswith(\"/v2/$XN/$BB/\")) and .route==\"$XN\" and .status==200"
  step "podman run $XN/$BB:oci" "${POD[@]}" "${PODRUN[@]}" "$XN/$BB:oci" cat /etc/berth-e2e-origin &&
    equal "container output" "$(cat "$OUT")" "$XN"
  m=$(mark "$BLOG")
  step "podman push $B/team/podman:1" bash -c '"$@" tag docker.io/library/busybox:latest "$0/team/podman:1" && "$@" push --tls-verify=false "$0/team/podman:1"' "$B" "${POD[@]}" || return
  bexpect "berth stored team/podman:1 locally" "$m" '.method=="PUT" and .kind=="manifest" and .repo=="team/podman" and .route=="local" and .status==201'
  step "podman rmi + pull back $B/team/podman:1" bash -c '"$@" rmi "$0/team/podman:1" && "$@" pull --tls-verify=false "$0/team/podman:1"' "$B" "${POD[@]}"
  PODMAN_UP=1
}

# --- 4. skopeo --------------------------------------------------------------------------
SX=$RT/skopeo
: >"$RT/empty-registries.conf"
SK=(env CONTAINERS_REGISTRIES_CONF="$RT/empty-registries.conf" skopeo)   # no mirror rules from the machine
sc_skopeo() {
  need skopeo || return
  rm -rf "$SX"; mkdir -p "$SX"
  echo "  $(skopeo --version)"
  step "skopeo inspect docker://$B/$BB:latest" "${SK[@]}" inspect --tls-verify=false "docker://$B/$BB:latest" &&
    equal "inspected digest is docker.io's latest" "$(jq -r .Digest "$OUT")" "${DIG[d:latest]}"
  step "skopeo inspect docker://$B/busybox:oci (unqualified -> default upstream)" "${SK[@]}" inspect --tls-verify=false "docker://$B/busybox:oci" &&
    equal "inspected digest is docker.io's oci" "$(jq -r .Digest "$OUT")" "${DIG[d:oci]}"
  step "skopeo copy to an OCI layout" "${SK[@]}" copy --src-tls-verify=false "docker://$B/$BB:latest" "oci:$SX/layout:latest" &&
    check "OCI layout written" '[ -s "$SX/layout/index.json" ] && [ -f "$SX/layout/oci-layout" ]'
  step "skopeo copy --all of the index $XN/$BB:multi" "${SK[@]}" copy --all --src-tls-verify=false \
    "docker://$B/$XN/$BB:multi" "oci:$SX/multi:multi" &&
    equal "copied index has both platforms" \
      "$("${SK[@]}" inspect --raw "oci:$SX/multi:multi" | jq -r '[.manifests[].platform.architecture]|sort|join(",")')" "amd64,arm64"
  local m; m=$(mark "$BLOG")
  # --preserve-digests: skopeo's blob-info cache may otherwise substitute another
  # compression of the layer that it saw pushed here before (by podman, say)
  step "skopeo copy into local namespace $B/team/skopeo:1" "${SK[@]}" copy --preserve-digests --src-tls-verify=false --dest-tls-verify=false \
    "docker://$B/$BB:latest" "docker://$B/team/skopeo:1"
  bexpect "berth stored team/skopeo:1 locally" "$m" '.method=="PUT" and .kind=="manifest" and .repo=="team/skopeo" and .route=="local" and .status==201'
  step "skopeo inspect the pushed copy" "${SK[@]}" inspect --tls-verify=false "docker://$B/team/skopeo:1" &&
    equal "pushed copy kept the digest" "$(jq -r .Digest "$OUT")" "${DIG[d:latest]}"
  step "skopeo list-tags on mirrored $BB" "${SK[@]}" list-tags --tls-verify=false "docker://$B/$BB" &&
    equal "mirrored tags (from docker.io)" "$(jq -r '[.Tags[]|select(.=="latest" or .=="oci" or .=="multi")]|sort|join(",")' "$OUT")" "latest,multi,oci"
  step "skopeo list-tags on $B/$XN/$BB" "${SK[@]}" list-tags --tls-verify=false "docker://$B/$XN/$BB" &&
    check "tags include multi" 'jq -e ".Tags|index(\"multi\")" "$OUT" >/dev/null' "$(cat "$OUT")"
  step_fails "a push into the mirrored $XN/$BB is denied" 'denied' \
    "${SK[@]}" copy --src-tls-verify=false --dest-tls-verify=false "docker://$B/team/skopeo:1" "docker://$B/$XN/$BB:pushed"
  check "upstream $XN did not get the tag" '! crane --insecure digest "$UP2/$BB:pushed" >/dev/null 2>&1'
}

# --- 5. crane + regctl -------------------------------------------------------------------
WX=$RT/crane
sc_crane() {
  need crane regctl || return
  rm -rf "$WX"; mkdir -p "$WX"
  local C=(crane --insecure) R=(env REGCTL_CONFIG="$WX/regctl.json" regctl --host "reg=$B,tls=disabled")
  echo "  crane $(crane version), regctl $("${R[@]}" version --format '{{.VCSTag}}' 2>/dev/null)"
  step "crane digest $B/$BB:latest" "${C[@]}" digest "$B/$BB:latest" && equal "digest is docker.io's" "$(cat "$OUT")" "${DIG[d:latest]}"
  local m; m=$(mark "$BLOG")
  step "crane digest $B/$XN/$BB:latest (path-prefix routing)" "${C[@]}" digest "$B/$XN/$BB:latest" &&
    equal "digest is $XN's" "$(cat "$OUT")" "${DIG[x:latest]}"
  bexpect "berth routed the prefixed path to $XN" "$m" ".path==\"/v2/$XN/$BB/manifests/latest\" and .route==\"$XN\" and .status==200"
  step "crane manifest $B/$BB:multi" "${C[@]}" manifest "$B/$BB:multi" &&
    equal "index lists two platforms" "$(jq -r '.manifests|length' "$OUT")" 2
  step "crane pull $B/$BB:latest" "${C[@]}" pull "$B/$BB:latest" "$WX/bb.tar"
  step "crane push to $B/team/crane:1" "${C[@]}" push "$WX/bb.tar" "$B/team/crane:1"
  step "crane ls $B/team/crane" "${C[@]}" ls "$B/team/crane" && equal "local tags" "$(cat "$OUT")" "1"
  step "crane ls $B/$BB (mirrored)" "${C[@]}" ls "$B/$BB" && check "mirrored tags include multi" 'grep -qx multi "$OUT"' "$(cat "$OUT")"
  step "crane copy $B/team/crane:1 -> $B/team/crane-copy:1 (between local namespaces)" "${C[@]}" copy "$B/team/crane:1" "$B/team/crane-copy:1" &&
    equal "copy kept the digest" "$("${C[@]}" digest "$B/team/crane-copy:1" 2>&1)" "$("${C[@]}" digest "$B/team/crane:1" 2>&1)"
  step "crane catalog $B" "${C[@]}" catalog "$B" &&
    check "catalog lists the mirrored and the local repositories" \
      'grep -qx "docker.io/$BB" "$OUT" && grep -qx "$XN/$BB" "$OUT" && grep -qx team/crane "$OUT"' "$(cat "$OUT")"
  step_fails "crane tag into mirrored $BB is denied" 'denied' "${C[@]}" tag "$B/$BB:latest" e2e-pushed
  step "regctl image digest $B/$XN/$BB:multi" "${R[@]}" image digest "$B/$XN/$BB:multi" &&
    equal "digest is $XN's multi" "$(cat "$OUT")" "${DIG[x:multi]}"
  step "regctl manifest get $B/$BB:oci" "${R[@]}" manifest get --format raw-body "$B/$BB:oci" &&
    equal "OCI media type kept" "$(jq -r .mediaType "$OUT")" "application/vnd.oci.image.manifest.v1+json"
  step "regctl image copy $B/$XN/$BB:multi -> $B/team/regctl:multi (mirror to local namespace)" \
    "${R[@]}" image copy "$B/$XN/$BB:multi" "$B/team/regctl:multi" &&
    equal "copied index kept its digest" "$("${R[@]}" image digest "$B/team/regctl:multi" 2>&1)" "${DIG[x:multi]}"
  step "regctl tag ls $B/team/regctl" "${R[@]}" tag ls "$B/team/regctl" && equal "tags" "$(cat "$OUT")" "multi"
}

# --- 6. oras: artifacts and referrers --------------------------------------------------------
OX=$RT/oras
sc_oras() {
  need oras crane || return
  rm -rf "$OX"; mkdir -p "$OX/pull-art" "$OX/pull-sig"
  local O=(oras) AT=application/vnd.berth.e2e.artifact ST=application/vnd.berth.e2e.signature
  echo "  oras $(oras version | awk '/^Version/{print $2}')"
  echo "artifact payload $$" >"$OX/artifact.txt"; echo "signature payload $$" >"$OX/sig.txt"
  step "oras push $B/team/oras:art --artifact-type $AT" \
    bash -c 'cd "$0" && oras push --plain-http "$1/team/oras:art" --artifact-type "$2" artifact.txt:text/plain' "$OX" "$B" "$AT" || return
  step "oras manifest fetch" "${O[@]}" manifest fetch --plain-http "$B/team/oras:art" &&
    equal "artifactType stored" "$(jq -r .artifactType "$OUT")" "$AT"
  step "oras pull $B/team/oras:art" bash -c 'cd "$0" && oras pull --plain-http "$1/team/oras:art"' "$OX/pull-art" "$B" &&
    check "artifact content round-trips" 'cmp -s "$OX/artifact.txt" "$OX/pull-art/artifact.txt"'
  # a subject image in a local namespace (mirrored repositories are read-only)
  step "crane copy $B/$BB:oci -> $B/team/signed:1 (subject)" crane --insecure copy "$B/$BB:oci" "$B/team/signed:1" || return
  local subj; subj=$(crane --insecure digest "$B/team/signed:1" 2>&1)
  step "oras attach --artifact-type $ST to team/signed:1" \
    bash -c 'cd "$0" && oras attach --plain-http --artifact-type "$2" "$1/team/signed:1" sig.txt:text/plain' "$OX" "$B" "$ST" || return
  local m; m=$(mark "$BLOG")
  step "oras discover $B/team/signed:1" "${O[@]}" discover --plain-http --format json "$B/team/signed:1" || return
  local sig; sig=$(jq -r --arg t "$ST" '[.. | objects | select(.artifactType? == $t) | .digest] | first // empty' "$OUT")
  check "discover lists the signature" '[ -n "$sig" ]' "$(cat "$OUT")"
  bexpect "discover used the referrers API" "$m" ".kind==\"referrers\" and .repo==\"team/signed\" and .status==200"
  local ref; ref=$(curl -s "http://$B/v2/team/signed/referrers/$subj?artifactType=$ST")
  equal "GET /v2/team/signed/referrers/<subject> lists it" "$(jq -r '[.manifests[].digest]|join(",")' <<<"$ref" 2>&1)" "$sig"
  [ -n "$sig" ] && step "oras pull the signature by digest" \
    bash -c 'cd "$0" && oras pull --plain-http "$1/team/signed@$2"' "$OX/pull-sig" "$B" "$sig" &&
    check "signature content round-trips" 'cmp -s "$OX/sig.txt" "$OX/pull-sig/sig.txt"'
}

# --- 7. upstreams down -------------------------------------------------------------------------
sc_upstream_down() {
  [ "$DOCKER_UP$CONTAINERD_UP$PODMAN_UP" = 000 ] && ! command -v skopeo >/dev/null &&
    { unavailable "no client scenario ran before"; return; }
  stop_bg up-docker.io; stop_bg up-example
  check "both upstream registries are down" '! curl -s -o /dev/null "http://$UP1/v2/" && ! curl -s -o /dev/null "http://$UP2/v2/"' || return
  sleep "${TAG_TTL%s}"   # every cached tag is past its TTL: berth must try the upstream and serve stale
  local stale0; stale0=$(metric 'berth_cache_requests_total{kind="tag",result="stale"}')
  local m; m=$(mark "$BLOG")
  if [ "$DOCKER_UP" = 1 ]; then
    "${DK[@]}" rmi busybox busybox:multi "$B/team/app:1" >/dev/null 2>&1
    check "dockerd has no images" '[ -z "$("${DK[@]}" images -q)" ]' "$("${DK[@]}" images 2>&1)"
    step "docker pull busybox" "${DK[@]}" pull busybox
    step "docker pull busybox:multi" "${DK[@]}" pull busybox:multi
    step "docker pull $B/team/app:1" "${DK[@]}" pull "$B/team/app:1"
    step "docker run busybox" "${DK[@]}" run --rm --network=none busybox cat /etc/berth-e2e-origin
  else echo "  (dockerd: its scenario did not complete; not repeated)"; fi
  if [ "$CONTAINERD_UP" = 1 ]; then
    stop_bg containerd
    for mnt in $(awk -v r="$CX/" 'index($2, r)==1 {print $2}' /proc/mounts | sort -r); do umount "$mnt" 2>/dev/null; done
    if start_containerd "$CX/root-fresh"; then
      check "fresh containerd has no images" '[ -z "$("${CTR[@]}" images ls -q)" ]'
      ctr_pulls
    else echo "  FAIL containerd did not restart with a fresh root"; S_FAILED=1; fi
  else echo "  (containerd: its scenario did not complete; not repeated)"; fi
  if [ "$PODMAN_UP" = 1 ]; then
    "${POD[@]}" rmi -a -f >/dev/null 2>&1
    step "podman pull docker.io/$BB:latest" "${POD[@]}" pull "docker.io/$BB:latest"
    step "podman pull $XN/$BB:oci" "${POD[@]}" pull "$XN/$BB:oci"
  fi
  if command -v skopeo >/dev/null; then
    rm -rf "$SX/down"; mkdir -p "$SX/down"
    local ref
    for ref in "$BB:latest" "busybox:oci" "$XN/$BB:latest" "team/skopeo:1"; do
      step "skopeo copy docker://$B/$ref" "${SK[@]}" copy --src-tls-verify=false "docker://$B/$ref" "oci:$SX/down/l:${ref//[\/:]/-}"
    done
    step "skopeo copy --all docker://$B/$XN/$BB:multi" "${SK[@]}" copy --all --src-tls-verify=false "docker://$B/$XN/$BB:multi" "oci:$SX/down/multi:x"
  fi
  local stale1; stale1=$(metric 'berth_cache_requests_total{kind="tag",result="stale"}')
  check "berth served cached tags while the upstreams were down (stale counter $stale0 -> $stale1)" \
    'awk -v a="$stale0" -v b="$stale1" "BEGIN{exit !(b>a)}"'
  bexpect_none "no 5xx from berth while the upstreams were down" "$m" '.status>=500'
}

# --- berth's own log -------------------------------------------------------------------------------
sc_berth_log() {
  bexpect_none "berth answered no request with a 5xx during the run" 0 '.status>=500'
  local n; n=$(jq -Rc 'fromjson? | select(.level=="error" or .level=="fatal" or .level=="panic")' "$BLOG" | wc -l)
  check "berth logged no errors" '[ "$n" = 0 ]' "$(jq -Rc 'fromjson? | select(.level=="error" or .level=="fatal" or .level=="panic")' "$BLOG" | tail -n 10)"
}
