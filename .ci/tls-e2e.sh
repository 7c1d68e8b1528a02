#!/usr/bin/env bash
# berth over TLS with real clients (`make tls-e2e`). A throwaway CA made by
# internal/testutil/mkcert (Go's crypto/x509) signs a certificate for
# 127.0.0.1 and localhost; `berth serve` runs with the tls section on
# 127.0.0.1, and each client trusts the CA the way the README says:
#   curl --cacert; crane, skopeo, regctl, oras with SSL_CERT_FILE (and each
#   is refused without it); podman with /etc/containers/certs.d/HOST:PORT/ca.crt;
#   containerd (ctr) with hosts.toml `ca`; dockerd with
#   /etc/docker/certs.d/HOST:PORT/ca.crt (push, pull, run; against a second
#   berth on this machine's non-loopback address, see sc_docker) and with
#   certs.d's client.cert against tls.client_ca_file.
# Then: the OCI conformance suite's full profile over TLS; a certificate
# rotation under load (the new serial is served within seconds and no request
# fails); mTLS (tls.client_ca_file): refused without a client certificate,
# served with one, a new client_ca_file taking over without a restart, and
# dockerd presenting certs.d's client.cert. And the token flow with team rules
# over TLS: docker login, pushes allowed and refused by team, the conformance
# suite with token auth (sc_token).
#
#   BERTH_E2E_REQUIRED=1  a client that cannot run is a FAILURE (default: SKIP)
#   BERTH_E2E_ONLY="curl crane rotation"  run only these scenarios
#   BERTH_E2E_KEEP=1      keep $RT after a passing run
# dockerd, containerd and podman need root (they SKIP otherwise). The
# certs.d directories it writes are named by a fresh port and removed at exit.
. "$(dirname "$0")/lib.sh"
set +e
E2E=$ROOT/.ci/e2e
T0=$(date +%s)
. "$E2E/lib-e2e.sh"
REQUIRED=${BERTH_E2E_REQUIRED:-0}
echo "tls-e2e: state and logs in $RT"
for t in crane jq curl openssl; do
  command -v $t >/dev/null || { echo "tls-e2e: FAIL: $t is required to set up the test and is missing (make tools; apt-get install $t)"; exit 1; }
done
[ -x "$ROOT/bin/berth" ] || { echo "tls-e2e: FAIL: $ROOT/bin/berth missing: make build"; exit 1; }
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } ||
  { echo "tls-e2e: FAIL: the test image is built from Debian's busybox-static (apt-get install busybox-static)"; exit 1; }

# --- CA, certificates, helpers -------------------------------------------------
PKI=$RT/pki; mkdir -p "$PKI" "$RT/bin"
(cd "$ROOT" && go build -o "$RT/bin/" ./internal/testutil/mkcert ./internal/testutil/tlsload) ||
  { echo "tls-e2e: FAIL: building the test helpers"; exit 1; }
MKCERT=$RT/bin/mkcert
"$MKCERT" ca "$PKI" || exit 1
CA=$PKI/ca.crt
SERIAL1=$("$MKCERT" server "$PKI" "$PKI/tls.crt" "$PKI/tls.key" 127.0.0.1 localhost) || exit 1
"$MKCERT" client "$PKI" "$PKI/client.crt" "$PKI/client.key" e2e-client >/dev/null || exit 1

# served_serial HOST:PORT : the serial of the certificate a new connection is shown.
served_serial() { openssl s_client -connect "$1" -servername localhost </dev/null 2>/dev/null |
  openssl x509 -noout -serial 2>/dev/null | sed 's/^serial=//'; }

# --- a plain berth that builds the test image, then berth over TLS ----------------
PLAIN=127.0.0.1:$(free_port)
cat >"$RT/plain.yaml" <<YML
upstreams: []
offline: true
local: ["**"]
YML
start_berth plain "${PLAIN#*:}" "$RT/plain.yaml" || { echo "tls-e2e: FAIL: plain berth did not start"; exit 1; }
"$ROOT/.ci/make-image.sh" "$PLAIN" tls/busybox tls-e2e >"$RT/images.txt" 2>&1 ||
  { echo "tls-e2e: FAIL: building the test image:"; cat "$RT/images.txt"; exit 1; }
declare -A DIG; while read -r t d; do DIG[$t]=$d; done <"$RT/images.txt"
crane --insecure pull --format oci "$PLAIN/tls/busybox:latest" "$RT/layout" >"$RT/crane-pull.log" 2>&1 ||
  { echo "tls-e2e: FAIL: crane pull from the plain berth"; cat "$RT/crane-pull.log"; exit 1; }
crane --insecure pull --format oci "$PLAIN/tls/busybox:multi" "$RT/layout-multi" >>"$RT/crane-pull.log" 2>&1
stop_bg plain

PORT=$(free_port); B=127.0.0.1:$PORT; BLOG=$RT/berth.log
cat >"$RT/berth.yaml" <<YML
upstreams: []
offline: true
local: ["**"]
tls:
  cert_file: $PKI/tls.crt
  key_file: $PKI/tls.key
YML
start_bg berth "$ROOT/bin/berth" serve --config "$RT/berth.yaml" --addr "$B" --data "$RT/berth-data" --log-format json
BERTH_PID=$(cat "$RT/berth.pid")
up=0; for _ in $(seq 300); do curl -sf --cacert "$CA" -o /dev/null "https://$B/v2/" && { up=1; break; }
  kill -0 "$BERTH_PID" 2>/dev/null || break; sleep 0.1; done
[ $up = 1 ] || { echo "tls-e2e: FAIL: berth did not serve TLS"; tail -20 "$BLOG"; exit 1; }
echo "tls-e2e: berth on https://$B (serial $SERIAL1, CA $CA, log $BLOG)"
# The test image, pushed over TLS for every scenario (crane checks it below).
for t in latest multi; do
  src=$RT/layout; [ $t = multi ] && src=$RT/layout-multi
  SSL_CERT_FILE=$CA crane push "$src" "$B/tls/busybox:$t" >>"$RT/crane-push.log" 2>&1 ||
    { echo "tls-e2e: FAIL: crane push over TLS:"; cat "$RT/crane-push.log"; exit 1; }
done
tmetric() { curl -s --cacert "$CA" "https://$B/metrics" | awk -v n="$1" '$1==n {printf "%.0f\n", $2}'; }

# certs.d directories made by this run, removed at exit.
MADE=()
certsd() { mkdir -p "$1" && cp "$CA" "$1/ca.crt" && MADE+=("$1"); }
cleanup_certsd() { local d; for d in "${MADE[@]}"; do rm -rf "$d"; done; }
trap 'cleanup_certsd; e2e_cleanup' EXIT

# --- scenarios ------------------------------------------------------------------
sc_curl() {
  step "curl --cacert: GET /v2/ over HTTP/2" curl -sS --cacert "$CA" --http2 -o /dev/null -w '%{http_version} %{http_code}' "https://$B/v2/" &&
    equal "protocol and status" "$(cat "$OUT")" "2 200"
  step "curl --cacert https://localhost:$PORT (the DNS SAN)" curl -sS --cacert "$CA" -o /dev/null -w '%{http_code}' "https://localhost:$PORT/v2/" &&
    equal "status" "$(cat "$OUT")" "200"
  step_fails "curl without the CA is refused" 'certificate' curl -sS -o /dev/null "https://$B/v2/"
  step_fails "TLS 1.1 is refused" 'alert|error|handshake|no protocols' openssl s_client -connect "$B" -tls1_1 </dev/null
  local want; want=$(date -d "$(openssl x509 -noout -enddate -in "$PKI/tls.crt" | cut -d= -f2)" +%s)
  equal "berth_tls_cert_expiry_timestamp_seconds is the certificate's notAfter" "$(tmetric berth_tls_cert_expiry_timestamp_seconds)" "$want"
  equal "served serial" "$(served_serial "$B")" "$SERIAL1"
}

CX_=$RT/clients
sc_crane() {
  need crane || return
  mkdir -p "$CX_"
  local C=(env SSL_CERT_FILE="$CA" crane)
  step_fails "crane without SSL_CERT_FILE is refused" 'x509|certificate' crane digest "$B/tls/busybox:latest"
  step "crane push (SSL_CERT_FILE) $B/tls/crane:pushed" "${C[@]}" push "$RT/layout" "$B/tls/crane:pushed" &&
    equal "pushed digest" "$("${C[@]}" digest "$B/tls/crane:pushed" 2>&1)" "${DIG[latest]}"
  step "crane digest" "${C[@]}" digest "$B/tls/busybox:latest" && equal "digest kept" "$(cat "$OUT")" "${DIG[latest]}"
  step "crane digest :multi" "${C[@]}" digest "$B/tls/busybox:multi" && equal "index digest kept" "$(cat "$OUT")" "${DIG[multi]}"
  step "crane pull" "${C[@]}" pull "$B/tls/busybox:latest" "$CX_/bb.tar"
  step "crane copy tls/busybox:latest -> tls/crane:1" "${C[@]}" copy "$B/tls/busybox:latest" "$B/tls/crane:1"
  step "berth warm --server https://$B (SSL_CERT_FILE)" env SSL_CERT_FILE="$CA" "$ROOT/bin/berth" warm --server "https://$B" "$B/tls/busybox:multi"
  step "crane ls" "${C[@]}" ls "$B/tls/crane" && equal "tags" "$(sort "$OUT" | tr "\n" " ")" "1 pushed "
}
sc_skopeo() {
  need skopeo || return
  local S=(env SSL_CERT_FILE="$CA" skopeo)
  step_fails "skopeo without SSL_CERT_FILE is refused" 'x509|certificate' skopeo inspect "docker://$B/tls/busybox:latest"
  step "skopeo inspect (SSL_CERT_FILE)" "${S[@]}" inspect "docker://$B/tls/busybox:latest" &&
    equal "digest" "$(jq -r .Digest "$OUT")" "${DIG[latest]}"
  step "skopeo copy --preserve-digests into tls/skopeo:1" "${S[@]}" copy --preserve-digests \
    "docker://$B/tls/busybox:latest" "docker://$B/tls/skopeo:1"
  step "skopeo copy to an OCI layout" "${S[@]}" copy "docker://$B/tls/skopeo:1" "oci:$CX_/skopeo:1" &&
    check "layout written" '[ -s "$CX_/skopeo/index.json" ]'
}
sc_regctl() {
  need regctl || return
  local R=(env SSL_CERT_FILE="$CA" REGCTL_CONFIG="$CX_/regctl.json" regctl)
  step_fails "regctl without SSL_CERT_FILE is refused" 'x509|certificate' env REGCTL_CONFIG="$CX_/regctl-none.json" regctl image digest "$B/tls/busybox:latest"
  step "regctl image digest (SSL_CERT_FILE)" "${R[@]}" image digest "$B/tls/busybox:multi" && equal "digest" "$(cat "$OUT")" "${DIG[multi]}"
  step "regctl image copy -> tls/regctl:multi" "${R[@]}" image copy "$B/tls/busybox:multi" "$B/tls/regctl:multi" &&
    equal "copied index digest" "$("${R[@]}" image digest "$B/tls/regctl:multi" 2>&1)" "${DIG[multi]}"
}
sc_oras() {
  need oras || return
  local d=$CX_/oras; mkdir -p "$d/pull"; echo "tls artifact $$" >"$d/a.txt"
  step_fails "oras without SSL_CERT_FILE is refused" 'x509|certificate' bash -c 'cd "$0" && oras push "$1/tls/oras:art" a.txt:text/plain' "$d" "$B"
  step "oras push (SSL_CERT_FILE)" env SSL_CERT_FILE="$CA" bash -c 'cd "$0" && oras push "$1/tls/oras:art" --artifact-type application/vnd.berth.tls a.txt:text/plain' "$d" "$B" &&
  step "oras pull" env SSL_CERT_FILE="$CA" bash -c 'cd "$0" && oras pull "$1/tls/oras:art"' "$d/pull" "$B" &&
    check "artifact round-trips" 'cmp -s "$d/a.txt" "$d/pull/a.txt"'
}

PX=$RT/podman
POD=(podman --root "$PX/root" --runroot "$PX/run" --storage-driver=vfs --cgroup-manager=cgroupfs --events-backend=file --tmpdir "$PX/tmp")
sc_podman() {
  need_root podman && need podman runc || return
  mkdir -p "$PX/tmp"
  # (Before dockerd's certs.d exists: containers/image reads /etc/docker/certs.d too.)
  "${POD[@]}" info >"$PX/info.log" 2>&1 || { unavailable "podman does not work here (log $PX/info.log)"; return; }
  step_fails "podman pull without certs.d is refused" 'x509|certificate' "${POD[@]}" pull "$B/tls/busybox:latest"
  certsd "/etc/containers/certs.d/$B"
  step "podman pull with /etc/containers/certs.d/$B/ca.crt" "${POD[@]}" pull "$B/tls/busybox:latest" || return
  equal "podman's image digest" "$("${POD[@]}" image inspect "$B/tls/busybox:latest" --format '{{.Digest}}' 2>&1)" "${DIG[latest]}"
  step "podman run" "${POD[@]}" run --rm --network=none --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    "$B/tls/busybox:latest" cat /etc/berth-e2e-origin && equal "container output" "$(cat "$OUT")" "tls-e2e"
  step "podman push $B/tls/podman:1" bash -c '"${@:2}" tag "$0/tls/busybox:latest" "$0/tls/podman:1" && "${@:2}" push "$0/tls/podman:1"' "$B" x "${POD[@]}"
  rm -rf "/etc/containers/certs.d/$B"
}

CTD=$RT/containerd
CTR=(ctr --address "$CTD/containerd.sock" --namespace berth-tls)
sc_containerd() {
  need_root containerd && need containerd ctr runc || return
  mkdir -p "$CTD/hosts/$B" "$CTD/none/$B"
  cat >"$CTD/config.toml" <<TOML
version = 2
root = "$CTD/root"
state = "$CTD/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CTD/containerd.sock"
[ttrpc]
  address = "$CTD/containerd.sock.ttrpc"
[debug]
  address = "$CTD/debug.sock"
TOML
  # deploy/containerd/certs.d/berth.internal:5000/hosts.toml, for this address and CA.
  sed -e "s#berth.internal:5000#$B#g" -e "s#/etc/containerd/certs.d/[^\"]*ca.crt#$CA#" \
    "$ROOT/deploy/containerd/certs.d/berth.internal:5000/hosts.toml" >"$CTD/hosts/$B/hosts.toml"
  grep -v '^ *ca = ' "$CTD/hosts/$B/hosts.toml" >"$CTD/none/$B/hosts.toml"
  start_bg containerd containerd --config "$CTD/config.toml"
  local i ok=0; for i in $(seq 120); do "${CTR[@]}" version >/dev/null 2>&1 && { ok=1; break; }; sleep 0.25; done
  [ $ok = 1 ] || { unavailable "containerd did not start (log $RT/containerd.log)"; return; }
  step_fails "ctr pull with a hosts.toml without ca is refused" 'x509|certificate' \
    "${CTR[@]}" images pull --snapshotter native --hosts-dir "$CTD/none" "$B/tls/busybox:latest"
  step "ctr pull with hosts.toml ca" "${CTR[@]}" images pull --snapshotter native --hosts-dir "$CTD/hosts" "$B/tls/busybox:latest" || return
  equal "containerd's digest" "$("${CTR[@]}" images ls | awk -v r="$B/tls/busybox:latest" '$1==r {print $3}')" "${DIG[latest]}"
  step "ctr run" "${CTR[@]}" run --rm --snapshotter native "$B/tls/busybox:latest" tls-e2e-c1 cat /etc/berth-e2e-origin &&
    equal "container output" "$(cat "$OUT")" "tls-e2e"
  step "ctr push $B/tls/ctr:1" bash -c '"${@:1}" images tag "$0/tls/busybox:latest" "$0/tls/ctr:1" >/dev/null && "${@:1}" images push --hosts-dir "'"$CTD/hosts"'" "$0/tls/ctr:1"' "$B" "${CTR[@]}"
  step "the pushed tag resolves" env SSL_CERT_FILE="$CA" crane digest "$B/tls/ctr:1" && equal "digest" "$(cat "$OUT")" "${DIG[latest]}"
  stop_bg containerd
}

DX=$RT/docker
DK=(env DOCKER_CONFIG="$DX/cfg" docker -H "unix://$DX/docker.sock")
[ -x /usr/bin/docker ] && DK[2]=/usr/bin/docker
start_dockerd() {
  mkdir -p "$DX/cfg"; echo '{}' >"$DX/daemon.json"
  start_bg dockerd dockerd --config-file "$DX/daemon.json" --data-root "$DX/data" --exec-root "$DX/exec" \
    --pidfile "$DX/docker.pid" -H "unix://$DX/docker.sock" \
    --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs
  local i; for i in $(seq 120); do "${DK[@]}" version >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$RT/dockerd.pid" 2>/dev/null)" 2>/dev/null || break; sleep 0.25; done
  tail -n 15 "$RT/dockerd.log" | sed 's/^/    | /'; return 1
}
# dockerd reads certs.d only for a registry it counts as secure, and it counts
# every 127.0.0.0/8 address as insecure (it then accepts any certificate and
# falls back to plain HTTP). So its certs.d is checked against a second berth
# on this machine's own non-loopback address (with a certificate for it).
DHOST=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+(\.[0-9]+){3}$' | grep -v '^127\.' | head -1)
sc_docker() {
  need_root dockerd && need dockerd docker runc || return
  start_dockerd || { unavailable "dockerd did not start (log $RT/dockerd.log)"; return; }
  echo "  dockerd $(dockerd --version | awk '{print $3}' | tr -d ,)"
  step "docker pull $B/tls/busybox:latest (loopback: dockerd skips verification there)" "${DK[@]}" pull "$B/tls/busybox:latest" || return
  equal "pulled digest" "$("${DK[@]}" image inspect "$B/tls/busybox:latest" --format '{{index .RepoDigests 0}}' 2>&1)" "$B/tls/busybox@${DIG[latest]}"
  [ -n "$DHOST" ] || { unavailable "no non-loopback IPv4 address here: dockerd's certs.d cannot be checked"; return; }
  local port; port=$(free_port); D=$DHOST:$port
  "$MKCERT" server "$PKI" "$PKI/d.crt" "$PKI/d.key" "$DHOST" >/dev/null
  cat >"$RT/dberth.yaml" <<YML
upstreams: []
offline: true
local: ["**"]
tls: {cert_file: $PKI/d.crt, key_file: $PKI/d.key}
YML
  start_bg dberth "$ROOT/bin/berth" serve --config "$RT/dberth.yaml" --addr "$D" --data "$RT/dberth-data" --log-format json
  local i; for i in $(seq 300); do curl -sf --cacert "$CA" -o /dev/null "https://$D/v2/" && break; sleep 0.1; done
  "${DK[@]}" tag "$B/tls/busybox:latest" "$D/tls/docker:1"
  step_fails "docker push to https://$D without certs.d is refused" 'x509|certificate' "${DK[@]}" push "$D/tls/docker:1"
  certsd "/etc/docker/certs.d/$D"
  step "docker push with /etc/docker/certs.d/$D/ca.crt" "${DK[@]}" push "$D/tls/docker:1" || return
  local pushed; pushed=$(grep -oE 'digest: sha256:[0-9a-f]{64}' "$OUT" | cut -d' ' -f2)
  step "docker rmi + pull back" bash -c '"${@:1}" rmi "$0/tls/docker:1" "'"$B"'/tls/busybox:latest" && "${@:1}" pull "$0/tls/docker:1"' "$D" "${DK[@]}" &&
    equal "pulled digest is the pushed one" "$("${DK[@]}" image inspect "$D/tls/docker:1" --format '{{index .RepoDigests 0}}' 2>&1)" "$D/tls/docker@$pushed"
  step "docker run" "${DK[@]}" run --rm --network=none "$D/tls/docker:1" cat /etc/berth-e2e-origin &&
    equal "container output" "$(cat "$OUT")" "tls-e2e"
  # mTLS: the same berth restarted with tls.client_ca_file; dockerd presents certs.d's client.cert.
  stop_bg dberth
  printf '  client_ca_file: %s\n' "$CA" >>"$RT/dberth.yaml"
  sed -i "s#^tls: {cert_file: \(.*\), key_file: \(.*\)}#tls:\n  cert_file: \1\n  key_file: \2#" "$RT/dberth.yaml"
  start_bg dberth "$ROOT/bin/berth" serve --config "$RT/dberth.yaml" --addr "$D" --data "$RT/dberth-data" --log-format json
  for i in $(seq 300); do curl -sf --cacert "$CA" --cert "$PKI/client.crt" --key "$PKI/client.key" -o /dev/null "https://$D/v2/" && break; sleep 0.1; done
  "${DK[@]}" rmi "$D/tls/docker:1" >/dev/null 2>&1
  step_fails "mTLS: docker pull without client.cert is refused" 'certificate|tls|remote error' "${DK[@]}" pull "$D/tls/docker:1"
  cp "$PKI/client.crt" "/etc/docker/certs.d/$D/client.cert"; cp "$PKI/client.key" "/etc/docker/certs.d/$D/client.key"
  step "mTLS: docker pull with certs.d client.cert/client.key" "${DK[@]}" pull "$D/tls/docker:1"
  stop_bg dberth
}

sc_conformance() {
  need conformance || return
  local out=$RT/conformance; mkdir -p "$out"
  (cd "$out" && env SSL_CERT_FILE="$CA" OCI_REGISTRY="$B" OCI_TLS=enabled \
    OCI_REPO1=conformance/repo1 OCI_REPO2=conformance/repo2 OCI_NAMESPACE=conformance/repo1 \
    OCI_CROSSMOUNT_NAMESPACE=conformance/repo2 OCI_RESULTS_DIR="$out/results" OCI_VERSION=1.1 OCI_LOG=warn \
    timeout 600 conformance >"$out/output.log" 2>&1)
  sed -n '/^OCI Conformance Result/,/Total/p' "$out/output.log" | sed 's/^/    /'
  check "conformance full profile over TLS: Pass, 0 failed" \
    'grep -q "^OCI Conformance Result: Pass" "$out/output.log" && ! grep -qE "^  [A-Za-z].*\.\.+:\s+(FAIL|Error)$" "$out/output.log"' \
    "$(grep -E '(FAIL|Error)$' "$out/output.log" | head; tail -5 "$out/output.log")"
}

sc_rotation() {
  local blob=$RT/rot.bin dg
  head -c $((4 << 20)) /dev/urandom >"$blob"; dg=sha256:$(sha256sum "$blob" | cut -d' ' -f1)
  step "push a 4 MiB blob" curl -sS --fail --cacert "$CA" -X POST -H 'Content-Type: application/octet-stream' \
    --data-binary "@$blob" "https://$B/v2/tls/rotation/blobs/uploads/?digest=$dg" || return
  rm -f "$RT/load.stop" "$RT/load.seen"
  "$RT/bin/tlsload" -url "https://$B/v2/tls/rotation/blobs/$dg" -ca "$CA" -stop "$RT/load.stop" -seen "$RT/load.seen" \
    -workers 4 >"$RT/load.out" 2>&1 &
  local lp=$! i
  # conns SERIAL : connections the load has made that were shown SERIAL.
  conns() { awk -v s="$1" '$1==s {print $2}' "$RT/load.seen" 2>/dev/null | grep . || echo 0; }
  for i in $(seq 300); do [ "$(conns "$SERIAL1")" -ge 10 ] && break; sleep 0.1; done
  check "the load is running on the first certificate" '[ "$(conns "$SERIAL1")" -ge 10 ]' "$(cat "$RT/load.out")"
  local reloads0; reloads0=$(tmetric 'berth_tls_cert_reloads_total{result="ok"}')
  # A rotation as certbot does it: the new pair written while clients pull,
  # the certificate first (for a moment it does not match the old key).
  local s2; s2=$("$MKCERT" server "$PKI" "$PKI/tls.crt" "$PKI/tls.key" 127.0.0.1 localhost) || { S_FAILED=1; return; }
  local t0=$(date +%s%N) served=""
  for i in $(seq 300); do served=$(served_serial "$B"); [ "$served" = "$s2" ] && break; sleep 0.1; done
  equal "the new certificate is served (within $(( ($(date +%s%N) - t0) / 1000000 )) ms)" "$served" "$s2"
  # The load goes on over the new certificate for a while: 20 more connections.
  for i in $(seq 600); do [ "$(conns "$s2")" -ge 20 ] && break; sleep 0.1; done
  touch "$RT/load.stop"; wait "$lp"; local rc=$?
  echo "    load: $(cat "$RT/load.out")"
  check "no request of the load failed" '[ $rc = 0 ] && grep -q " failures=0 " "$RT/load.out"' "$(cat "$RT/load.out")"
  check "the load's connections saw the old and then the new certificate (20 connections)" \
    '[ "$(conns "$SERIAL1")" -ge 10 ] && [ "$(conns "$s2")" -ge 20 ]' "$(cat "$RT/load.seen")"
  equal "berth_tls_cert_reloads_total{result=\"ok\"} rose by 1" "$(tmetric 'berth_tls_cert_reloads_total{result="ok"}')" "$((reloads0 + 1))"
  check "berth logged the rotation with the new serial" 'grep "tls: certificate reloaded" "$BLOG" | grep -q "\"serial\":\"$s2\""' "$(grep tls: "$BLOG" | tail -3)"
  # A broken pair is refused and the new one stays.
  echo garbage >"$PKI/tls.key"
  for i in $(seq 100); do [ "$(tmetric 'berth_tls_cert_reloads_total{result="error"}')" -ge 1 ] 2>/dev/null && break; sleep 0.1; done
  check "a broken key file is refused with an error naming tls.key_file" 'grep "new certificate files refused" "$BLOG" | grep -q tls.key_file' "$(grep tls: "$BLOG" | tail -3)"
  equal "and the certificate served is still the new one" "$(served_serial "$B")" "$s2"
  SERIAL1=$s2
}

sc_mtls() {
  local port; port=$(free_port); M=127.0.0.1:$port
  cat >"$RT/mtls.yaml" <<YML
upstreams: []
offline: true
local: ["**"]
tls:
  cert_file: $PKI/mtls.crt
  key_file: $PKI/mtls.key
  client_ca_file: $PKI/clients-ca.crt
YML
  cp "$CA" "$PKI/clients-ca.crt"
  "$MKCERT" server "$PKI" "$PKI/mtls.crt" "$PKI/mtls.key" 127.0.0.1 localhost >/dev/null
  start_bg mtls "$ROOT/bin/berth" serve --config "$RT/mtls.yaml" --addr "$M" --data "$RT/mtls-data" --log-format json
  local i; for i in $(seq 300); do curl -s --cacert "$CA" --cert "$PKI/client.crt" --key "$PKI/client.key" -o /dev/null "https://$M/v2/" && break; sleep 0.1; done
  step "curl with a client certificate is served" curl -sS --cacert "$CA" --cert "$PKI/client.crt" --key "$PKI/client.key" \
    -o /dev/null -w '%{http_code}' "https://$M/v2/" && equal "status" "$(cat "$OUT")" "200"
  # TLS 1.2, where the server's refusal is part of the handshake and curl names it
  # (with 1.3 the client only learns of it when it reads).
  step_fails "curl without a client certificate is refused" 'alert|certificate' curl -sS --tls-max 1.2 --cacert "$CA" -o /dev/null "https://$M/v2/"
  "$MKCERT" ca "$PKI/other" && "$MKCERT" client "$PKI/other" "$PKI/other/client.crt" "$PKI/other/client.key" intruder >/dev/null
  step_fails "a client certificate of another CA is refused" 'alert|certificate' \
    curl -sS --tls-max 1.2 --cacert "$CA" --cert "$PKI/other/client.crt" --key "$PKI/other/client.key" -o /dev/null "https://$M/v2/"
  step_fails "over TLS 1.3 too (no response)" '' curl -sS --cacert "$CA" -o /dev/null "https://$M/v2/"
  # client_ca_file is re-read like the pair: the other CA takes over.
  cp "$PKI/other/ca.crt" "$PKI/clients-ca.crt"
  local code=""
  for i in $(seq 150); do
    code=$(curl -s --cacert "$CA" --cert "$PKI/other/client.crt" --key "$PKI/other/client.key" -o /dev/null -w '%{http_code}' "https://$M/v2/")
    [ "$code" = 200 ] && break; sleep 0.1; done
  equal "after client_ca_file changed, the other CA's client is served" "$code" 200
  step_fails "and the first CA's client is refused" 'alert|certificate' \
    curl -sS --tls-max 1.2 --cacert "$CA" --cert "$PKI/client.crt" --key "$PKI/client.key" -o /dev/null "https://$M/v2/"
  stop_bg mtls
}


# berth over TLS with the token flow and team rules (issue 9's whole layer at
# once), on this machine's non-loopback address so that dockerd checks certs.d:
# docker login, a push to the user's own team's repository, a push to another
# team's refused, pull back; then the OCI conformance suite's full profile over
# TLS with token auth (OCI_USERNAME/OCI_PASSWORD).
sc_token() {
  [ -n "$DHOST" ] || { unavailable "no non-loopback IPv4 address here: dockerd's certs.d cannot be checked"; return; }
  local port; port=$(free_port); T=$DHOST:$port
  "$MKCERT" server "$PKI" "$PKI/t.crt" "$PKI/t.key" "$DHOST" >/dev/null
  local ht=$RT/token-htpasswd u; : >"$ht"
  for u in alice bob ci; do echo "$u-pw" | "$ROOT/bin/berth" htpasswd "$u" >>"$ht"; done
  cat >"$RT/tberth.yaml" <<YML
upstreams: []
offline: true
local: ["**"]
tls: {cert_file: $PKI/t.crt, key_file: $PKI/t.key}
auth:
  htpasswd: $ht
  token: {}
  anonymous_pull: false
access:
  - repos: ["team-a/**"]
    subjects: [alice]
    actions: [pull, push, delete]
  - repos: ["team-b/**"]
    subjects: [bob]
    actions: [pull, push, delete]
  - repos: ["conformance/**"]
    subjects: [ci]
    actions: [pull, push, delete]
  - repos: ["**"]
    subjects: [authenticated]
    actions: [pull]
YML
  start_bg tberth "$ROOT/bin/berth" serve --config "$RT/tberth.yaml" --addr "$T" --data "$RT/tberth-data" --log-format json
  local i; for i in $(seq 300); do [ "$(curl -s --cacert "$CA" -o /dev/null -w '%{http_code}' "https://$T/v2/")" = 401 ] && break; sleep 0.1; done
  check "/v2/ over TLS challenges with a Bearer realm on the same port" \
    'curl -s --cacert "$CA" -D - -o /dev/null "https://$T/v2/" | grep -qi "^www-authenticate: Bearer realm=\"https://$T/v2/token\""' || return
  if need_root dockerd && need dockerd docker runc; then
    kill -0 "$(cat "$RT/dockerd.pid" 2>/dev/null)" 2>/dev/null || start_dockerd || { unavailable "dockerd did not start"; return; }
    certsd "/etc/docker/certs.d/$T"
    "${DK[@]}" image inspect "$B/tls/busybox:latest" >/dev/null 2>&1 || "${DK[@]}" pull "$B/tls/busybox:latest" >/dev/null 2>&1
    step "docker login $T (alice, over TLS, token flow)" bash -c 'echo alice-pw | "${@:1}" login "$0" -u alice --password-stdin' "$T" "${DK[@]}" || return
    "${DK[@]}" tag "$B/tls/busybox:latest" "$T/team-a/app:1"
    "${DK[@]}" tag "$B/tls/busybox:latest" "$T/team-b/app:1"
    step "docker push $T/team-a/app:1 (alice's team)" "${DK[@]}" push "$T/team-a/app:1" || return
    step_fails "docker push $T/team-b/app:1 (another team's) is refused" 'denied|unauthorized|insufficient_scope' "${DK[@]}" push "$T/team-b/app:1"
    step "docker rmi + pull back $T/team-a/app:1" bash -c '"${@:1}" rmi "$0/team-a/app:1" && "${@:1}" pull "$0/team-a/app:1"' "$T" "${DK[@]}"
    "${DK[@]}" logout "$T" >/dev/null 2>&1
    step_fails "logged out: docker pull is refused (anonymous_pull: false)" 'unauthorized|denied|no basic auth|authentication required' \
      bash -c '"${@:1}" rmi "$0/team-a/app:1" >/dev/null 2>&1; "${@:1}" pull "$0/team-a/app:1"' "$T" "${DK[@]}"
  fi
  if need conformance; then
    local out=$RT/conformance-token; mkdir -p "$out"
    (cd "$out" && env SSL_CERT_FILE="$CA" OCI_ROOT_URL="https://$T" OCI_REGISTRY="$T" OCI_TLS=enabled OCI_USERNAME=ci OCI_PASSWORD=ci-pw \
      OCI_REPO1=conformance/repo1 OCI_REPO2=conformance/repo2 OCI_NAMESPACE=conformance/repo1 \
      OCI_CROSSMOUNT_NAMESPACE=conformance/repo2 OCI_RESULTS_DIR="$out/results" OCI_VERSION=1.1 OCI_LOG=warn \
      timeout 600 conformance >"$out/output.log" 2>&1)
    sed -n '/^OCI Conformance Result/,/Total/p' "$out/output.log" | sed 's/^/    /'
    check "conformance full profile over TLS with token auth: Pass, 0 failed" \
      'grep -q "^OCI Conformance Result: Pass" "$out/output.log" && ! grep -qE "^  [A-Za-z].*\.\.+:\s+(FAIL|Error)$" "$out/output.log"' \
      "$(grep -E '(FAIL|Error)$' "$out/output.log" | head; tail -5 "$out/output.log")"
  fi
  stop_bg tberth
}

SCENARIOS=(curl crane skopeo regctl oras podman containerd docker conformance token rotation mtls)
for s in "${SCENARIOS[@]}"; do
  if [ -n "${BERTH_E2E_ONLY:-}" ] && [[ " $BERTH_E2E_ONLY " != *" $s "* ]]; then continue; fi
  scenario "$s" "sc_$s"
done
stop_bg dockerd

echo
check "berth logged no error besides the refused key file" \
  '[ "$(jq -Rc "fromjson? | select(.level==\"error\") | select(.message|test(\"new certificate files refused\")|not)" "$BLOG" | wc -l)" = 0 ]' \
  "$(jq -Rc 'fromjson? | select(.level=="error")' "$BLOG" | head -5)" && RESULTS+=("PASS  berth-log") || RESULTS+=("FAIL  berth-log")
echo "tls-e2e summary:"
nfail=0
for r in "${RESULTS[@]}"; do echo "  $r"; [[ $r == FAIL* ]] && nfail=$((nfail+1)); done
echo "tls-e2e: total time $(( $(date +%s) - T0 ))s; state and logs in $RT"; E2E_DONE=1
if [ "$nfail" -gt 0 ]; then echo "tls-e2e: $nfail scenario(s) FAILED"; exit 1; fi
echo "tls-e2e: all scenarios passed or skipped"
E2E_OK=1
