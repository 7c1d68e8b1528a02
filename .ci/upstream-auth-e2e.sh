#!/usr/bin/env bash
# Upstreams behind a private CA and Basic auth, end to end with real processes
# (`make upstream-auth-e2e`): distribution's registry served over TLS with a
# certificate of a CA made by internal/testutil/mkcert (Go's crypto/x509) and
# an htpasswd file; a real `berth serve` trusting that CA with ca_file and
# getting the credentials from a credential helper script (and, for a second
# upstream entry, from a docker config.json); crane pulling through it. The
# same upstream configured without ca_file answers 502 with a detail naming the
# upstream, and berth logs the cause at warn. Then, against small Python
# upstreams: a token realm on 127.0.0.2 (not configured) is refused with a 502
# and a counting listener there sees no connection; an upstream 429's
# Retry-After reaches the client and concurrent clients during the window cost
# the upstream no request.
#
#   BERTH_E2E_REQUIRED=1   a missing tool is a FAILURE (default: SKIP with the reason)
. "$(dirname "$0")/lib.sh"
REQUIRED=${BERTH_E2E_REQUIRED:-0}
for tool in registry crane curl python3 go; do
  if ! command -v "$tool" >/dev/null; then
    [ "$REQUIRED" = 1 ] && fail "$tool is not installed (BERTH_E2E_REQUIRED=1)"
    echo "SKIP upstream-auth-e2e: $tool is not installed (make tools installs registry and crane)"; exit 0
  fi
done
[ -x "$ROOT/bin/berth" ] || fail "bin/berth is missing: run make build"
echo "upstream-auth-e2e: state and logs in $RT"
UP_PORT=$(free_port); BERTH_PORT=$(free_port)
UP=127.0.0.1:$UP_PORT; B=127.0.0.1:$BERTH_PORT
PASSWORD="upw-$RANDOM$RANDOM-e2e"

echo "--- a private CA, and distribution over TLS with htpasswd"
mkdir -p "$RT/pki" "$RT/bin" "$RT/docker"
(cd "$ROOT" && go build -o "$RT/mkcert" ./internal/testutil/mkcert) || fail "building mkcert"
mkdir -p "$RT/pki"
{ "$RT/mkcert" ca "$RT/pki" && "$RT/mkcert" server "$RT/pki" "$RT/pki/server.crt" "$RT/pki/server.key" 127.0.0.1 localhost &&
  "$RT/mkcert" client "$RT/pki" "$RT/pki/client.crt" "$RT/pki/client.key" berth; } >/dev/null || fail "mkcert"
printf '%s\n' "$PASSWORD" | "$ROOT/bin/berth" htpasswd robot >"$RT/htpasswd" || fail "berth htpasswd"
cat >"$RT/upstream-config.yml" <<YML
version: 0.1
log: {level: info, formatter: text}
storage:
  filesystem: {rootdirectory: $RT/upstream-data}
http:
  addr: $UP
  debug: {addr: ""}
  tls: {certificate: $RT/pki/server.crt, key: $RT/pki/server.key}
auth:
  htpasswd: {realm: private, path: $RT/htpasswd}
YML
OTEL_SDK_DISABLED=true OTEL_TRACES_EXPORTER=none OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
  start_bg upstream registry serve "$RT/upstream-config.yml"
up=""; for _ in $(seq 300); do
  up=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$RT/pki/ca.crt" "https://$UP/v2/" || true)
  [ "$up" = 401 ] && break; sleep 0.1
done
[ "$up" = 401 ] || fail "the TLS upstream did not come up asking for credentials (last HTTP $up; see $RT/upstream.log)"

# Test content, pushed with crane trusting the CA (SSL_CERT_FILE) and logged in
# with a docker config of its own (never the user's).
export DOCKER_CONFIG=$RT/docker
head -c 200000 /dev/urandom >"$RT/data"; tar -C "$RT" -cf "$RT/layer.tar" data
SSL_CERT_FILE=$RT/pki/ca.crt crane auth login "$UP" -u robot -p "$PASSWORD" 2>>"$RT/crane.log" || fail "crane auth login to the upstream"
SSL_CERT_FILE=$RT/pki/ca.crt crane append -f "$RT/layer.tar" -t "$UP/team/app:1" 2>>"$RT/crane.log" >/dev/null || fail "push to the upstream"
want=$(SSL_CERT_FILE=$RT/pki/ca.crt crane digest "$UP/team/app:1") || fail "digest from the upstream"
rm -f "$DOCKER_CONFIG/config.json"

# A credential helper speaking the helper protocol: host on stdin, JSON out.
cat >"$RT/bin/docker-credential-e2efake" <<SH
#!/bin/sh
echo "\$1" >>"$RT/helper-runs"
[ "\$1" = get ] || exit 1
read host
printf '{"ServerURL":"%s","Username":"robot","Secret":"%s"}' "\$host" "$PASSWORD"
SH
chmod +x "$RT/bin/docker-credential-e2efake"
printf '{"auths":{"%s":{"auth":"%s"}}}' "$UP" "$(printf 'robot:%s' "$PASSWORD" | base64 -w0)" >"$RT/berth-docker-config.json"

cat >"$RT/berth.yaml" <<YML
upstreams:
  - name: private.test
    url: https://$UP
    ca_file: $RT/pki/ca.crt
    credential_helper: e2efake
    tag_ttl: 0
  - name: fromconfig.test
    url: https://$UP
    ca_file: $RT/pki/ca.crt
    docker_config: $RT/berth-docker-config.json
  - name: noca.test
    url: https://$UP
    credential_helper: e2efake
local: ["mine/**"]
YML
PATH="$RT/bin:$PATH" start_berth berth "$BERTH_PORT" "$RT/berth.yaml"

echo "--- crane pulls through berth: ca_file + credential helper"
got=$(crane --insecure digest "$B/private.test/team/app:1" 2>>"$RT/crane.log") || fail "digest through berth (see $RT/berth.log)"
[ "$got" = "$want" ] || fail "digest through berth: $got, want $want"
crane --insecure pull "$B/private.test/team/app:1" "$RT/pulled.tar" 2>>"$RT/crane.log" || fail "crane pull through berth"
[ "$(grep -c get "$RT/helper-runs")" -ge 1 ] || fail "the credential helper was never run"
grep -q "$PASSWORD" "$RT/berth.log" && fail "the helper's secret appears in berth's log"

echo "--- the same through the docker_config upstream"
crane --insecure pull "$B/fromconfig.test/team/app:1" "$RT/pulled2.tar" 2>>"$RT/crane.log" || fail "crane pull with docker_config"

echo "--- without ca_file: 502 naming the upstream, a warn line with the cause"
code=$(curl -s -o "$RT/noca.json" -w '%{http_code}' "http://$B/v2/noca.test/team/app/manifests/1")
[ "$code" = 502 ] || fail "no ca_file: HTTP $code, want 502: $(cat "$RT/noca.json")"
grep -q '"code":"UNAVAILABLE"' "$RT/noca.json" && grep -q 'upstream noca.test' "$RT/noca.json" ||
  fail "no ca_file: body does not name the upstream: $(cat "$RT/noca.json")"
grep -q "$UP" "$RT/noca.json" && fail "no ca_file: the body gives away the upstream's address: $(cat "$RT/noca.json")"
if crane --insecure pull "$B/noca.test/team/app:1" "$RT/noca.tar" 2>"$RT/noca-crane.err"; then fail "crane pull without ca_file succeeded"; fi
grep -q "upstream noca.test: TLS: .*set ca_file" "$RT/noca-crane.err" || fail "crane did not show the cause: $(cat "$RT/noca-crane.err")"
ok=""; for _ in $(seq 50); do   # the log writer batches lines: poll for it
  grep '"level":"warn"' "$RT/berth.log" | grep '"upstream":"noca.test"' | grep -q certificate && { ok=1; break; }; sleep 0.1
done
[ -n "$ok" ] || fail "no warn line naming noca.test and the certificate problem in $RT/berth.log"

echo "--- upstream stopped: the cached image is still served"
stop_bg upstream
crane --insecure pull "$B/private.test/team/app:1" "$RT/pulled3.tar" 2>>"$RT/crane.log" || fail "cached pull with the upstream down"
code=$(curl -s -o "$RT/down.json" -w '%{http_code}' "http://$B/v2/private.test/team/other/manifests/1")
[ "$code" = 503 ] || fail "uncached with the upstream down: HTTP $code, want 503: $(cat "$RT/down.json")"

echo "--- a token realm on an unconfigured loopback address: refused, never contacted"
# fake.py MODE PORT LOG [REALM]: an HTTP upstream that logs one line per
# request and answers every one with a Bearer challenge naming REALM (realm)
# or 429 with Retry-After: 30 (limit); MODE listen counts TCP connections on
# 127.0.0.2:PORT instead.
cat >"$RT/fake.py" <<'PY'
import http.server, socket, socketserver, sys
mode, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def note(what):
    with open(log, "a") as f:
        f.write(what + "\n")
if mode == "listen":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.2", port)); s.listen(64)
    note("listening")
    while True:
        c, _ = s.accept(); note("connection"); c.close()
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        note(self.command + " " + self.path)
        if mode == "realm":
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Bearer realm="http://%s/token",service="x"' % sys.argv[4])
        else:
            self.send_response(429)
            self.send_header("Retry-After", "30")
        self.send_header("Content-Length", "0"); self.end_headers()
    do_GET = do_HEAD = answer
    def log_message(self, *a): pass
socketserver.ThreadingTCPServer.allow_reuse_address = True
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
REALM_PORT=$(free_port); FAKE_REALM_PORT=$(free_port); FAKE_LIMIT_PORT=$(free_port); B2_PORT=$(free_port); B2=127.0.0.1:$B2_PORT
start_bg listener python3 "$RT/fake.py" listen "$REALM_PORT" "$RT/listener.hits"
start_bg fakerealm python3 "$RT/fake.py" realm "$FAKE_REALM_PORT" "$RT/fakerealm.hits" "127.0.0.2:$REALM_PORT"
start_bg fakelimit python3 "$RT/fake.py" limit "$FAKE_LIMIT_PORT" "$RT/fakelimit.hits"
# ready NAME [PORT]: wait until NAME has logged a line (the HTTP ones are poked on PORT).
ready() { for _ in $(seq 100); do [ -s "$RT/$1.hits" ] && return 0
    [ -z "${2:-}" ] || curl -s -o /dev/null "http://127.0.0.1:$2/ping" || true; sleep 0.1; done
  fail "$1 did not start (see $RT/$1.log)"; }
ready listener; ready fakerealm "$FAKE_REALM_PORT"; ready fakelimit "$FAKE_LIMIT_PORT"
: >"$RT/fakerealm.hits"; : >"$RT/fakelimit.hits"
cat >"$RT/berth2.yaml" <<YML
upstreams:
  - name: realm.test
    url: http://127.0.0.1:$FAKE_REALM_PORT
    username: robot
    password: $PASSWORD
  - name: limit.test
    url: http://127.0.0.1:$FAKE_LIMIT_PORT
local: ["mine/**"]
YML
start_berth berth2 "$B2_PORT" "$RT/berth2.yaml"
code=$(curl -s -o "$RT/realm.json" -w '%{http_code}' "http://$B2/v2/realm.test/team/app/manifests/1")
[ "$code" = 502 ] || fail "refused realm: HTTP $code, want 502: $(cat "$RT/realm.json")"
grep -q 'upstream realm.test' "$RT/realm.json" || fail "refused realm: the detail does not name the upstream: $(cat "$RT/realm.json")"
grep -q '127.0.0.2' "$RT/realm.json" && fail "refused realm: the body gives away the realm's address"
[ "$(count_log "$RT/fakerealm.hits" GET)" -ge 1 ] || fail "berth never asked realm.test, so the realm was never named"
[ "$(count_log "$RT/listener.hits" connection)" = 0 ] || fail "the unconfigured realm saw $(count_log "$RT/listener.hits" connection) connections, want 0"
ok=""; for _ in $(seq 50); do
  grep '"level":"warn"' "$RT/berth2.log" | grep '"upstream":"realm.test"' | grep -q "refusing the upstream's token realm" && { ok=1; break; }; sleep 0.1
done
[ -n "$ok" ] || fail "no warn line naming realm.test and the refused realm in $RT/berth2.log"
grep -q "$PASSWORD" "$RT/berth2.log" && fail "the upstream password appears in berth's log"

echo "--- an upstream 429 with Retry-After: passed on, and asked once during the window"
code=$(curl -s -D "$RT/limit.hdr" -o "$RT/limit.json" -w '%{http_code}' "http://$B2/v2/limit.test/team/app/manifests/1")
[ "$code" = 429 ] || fail "429 upstream: HTTP $code, want 429: $(cat "$RT/limit.json")"
grep -qi '^Retry-After: *\(29\|30\)' "$RT/limit.hdr" || fail "429 upstream: no Retry-After of about 30 s passed on: $(cat "$RT/limit.hdr")"
pids=(); for i in $(seq 12); do
  curl -s -D "$RT/limit$i.hdr" -o /dev/null -w '%{http_code}' "http://$B2/v2/limit.test/team/app$i/manifests/1" >"$RT/limit$i.code" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for i in $(seq 12); do
  [ "$(cat "$RT/limit$i.code")" = 429 ] || fail "client $i during the window: HTTP $(cat "$RT/limit$i.code"), want 429"
  grep -qi '^Retry-After: *[0-9]' "$RT/limit$i.hdr" || fail "client $i during the window: no Retry-After"
done
[ "$(count_log "$RT/fakelimit.hits" GET)" = 1 ] || fail "the rate-limited upstream was asked $(count_log "$RT/fakelimit.hits" GET) times, want 1"

echo "PASS upstream-auth-e2e"
