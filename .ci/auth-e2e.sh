#!/usr/bin/env bash
# End-to-end test of berth's client authentication and access rules
# (`make auth-e2e`), with real clients and a real directory:
#   - Debian's slapd, started here in a temp dir (slapadd, no debconf), with
#     two users in two groups; berth checks them with auth.ldap
#   - berth 1: token flow (auth.token: {}), htpasswd + LDAP, team rules,
#     anonymous pulls on;  berth 2: the same with anonymous_pull: false;
#     berth 3: Basic only (no token endpoint), anonymous pulls on
#   - crane, dockerd, podman: login, push to the own team's repository,
#     push to another team's refused, pull; anonymous pulls allowed or
#     refused as configured; LDAP users and their groups' rules
#   - the OCI conformance suite, full profile, through the token flow
#   - audit lines for pushes, denials and failed logins; no password in the log
#   - SIGHUP: new rules apply to the next token
# Plain HTTP. A client that cannot run is SKIPped with the reason; with
# BERTH_E2E_REQUIRED=1 (CI) that is a failure. BERTH_E2E_ONLY="crane ldap"
# runs only those scenarios.
. "$(dirname "$0")/lib.sh"
set +e
E2E=$ROOT/.ci/e2e
T0=$(date +%s)
. "$E2E/lib-e2e.sh"
REQUIRED=${BERTH_E2E_REQUIRED:-0}
echo "auth-e2e: state and logs in $RT"
for t in crane jq curl; do
  command -v $t >/dev/null || { echo "auth-e2e: FAIL: $t is required and missing (make tools)"; exit 1; }
done
[ -x "$ROOT/bin/berth" ] || { echo "auth-e2e: FAIL: $ROOT/bin/berth missing: make build"; exit 1; }

# --- slapd: two users (carol in team-a, dave in team-b) ---------------------------
LDAP_URL="" LDAP_WHY=""
start_slapd() {
  if ! command -v slapd >/dev/null && [ ! -x /usr/sbin/slapd ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q slapd ldap-utils >"$RT/apt-slapd.log" 2>&1 ||
        { LDAP_WHY="apt-get install slapd failed (log $RT/apt-slapd.log)"; return 1; }
    else LDAP_WHY="slapd is not installed (apt-get install slapd ldap-utils, as root)"; return 1; fi
  fi
  local d=$RT/ldap port; port=$(free_port); mkdir -p "$d/db"
  local sbin=/usr/sbin; export PATH="$PATH:$sbin"
  cat >"$d/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile $d/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix "dc=berth,dc=test"
rootdn "cn=admin,dc=berth,dc=test"
rootpw $(slappasswd -s admin-pw)
directory $d/db
access to attrs=userPassword by anonymous auth by self read by * none
access to * by users read by * none
CONF
  { printf 'dn: dc=berth,dc=test\nobjectClass: dcObject\nobjectClass: organization\no: berth\ndc: berth\n\n'
    printf 'dn: ou=people,dc=berth,dc=test\nobjectClass: organizationalUnit\nou: people\n\n'
    printf 'dn: ou=groups,dc=berth,dc=test\nobjectClass: organizationalUnit\nou: groups\n\n'
    local u g
    for u in carol:team-a dave:team-b; do
      printf 'dn: uid=%s,ou=people,dc=berth,dc=test\nobjectClass: inetOrgPerson\nuid: %s\ncn: %s\nsn: %s\nuserPassword: %s\n\n' \
        "${u%%:*}" "${u%%:*}" "${u%%:*}" "${u%%:*}" "$(slappasswd -s "${u%%:*}-pw")"
    done
    for g in team-a:carol team-b:dave; do
      printf 'dn: cn=%s,ou=groups,dc=berth,dc=test\nobjectClass: groupOfNames\ncn: %s\nmember: uid=%s,ou=people,dc=berth,dc=test\n\n' \
        "${g%%:*}" "${g%%:*}" "${g#*:}"
    done; } >"$d/data.ldif"
  slapadd -f "$d/slapd.conf" -l "$d/data.ldif" >"$d/slapadd.log" 2>&1 || { LDAP_WHY="slapadd failed: $(tail -1 "$d/slapadd.log")"; return 1; }
  slaptest -u -f "$d/slapd.conf" >"$d/slaptest.log" 2>&1 || { LDAP_WHY="slaptest failed: $(tail -1 "$d/slaptest.log")"; return 1; }
  # -d keeps slapd in the foreground: start_bg owns it and stops it by PID.
  start_bg slapd slapd -f "$d/slapd.conf" -h "ldap://127.0.0.1:$port/" -d 0
  local i; for i in $(seq 100); do
    ldapsearch -x -H "ldap://127.0.0.1:$port" -D cn=admin,dc=berth,dc=test -w admin-pw -b dc=berth,dc=test -s base >/dev/null 2>&1 &&
      { LDAP_URL=ldap://127.0.0.1:$port; return 0; }
    sleep 0.1; done
  LDAP_WHY="slapd did not answer (log $RT/slapd.log)"; return 1
}
start_slapd && echo "auth-e2e: slapd on $LDAP_URL (carol in team-a, dave in team-b)" || echo "auth-e2e: no LDAP: $LDAP_WHY"

# --- three berths -------------------------------------------------------------------
HT=$RT/htpasswd; : >"$HT"
for u in alice bob; do echo "$u-pw" | "$ROOT/bin/berth" htpasswd "$u" >>"$HT"; done
ldap_yaml() { [ -n "$LDAP_URL" ] || return 0; cat <<YML
  ldap:
    url: $LDAP_URL
    bind_dn: cn=admin,dc=berth,dc=test
    bind_password_env: BERTH_E2E_LDAP_PW
    user_base: ou=people,dc=berth,dc=test
    user_filter: (uid={user})
    group_base: ou=groups,dc=berth,dc=test
    group_filter: (member={dn})
YML
}
RULES='access:
  - repos: ["team-a/**"]
    subjects: [alice, "group:team-a"]
    actions: [pull, push, delete]
  - repos: ["team-b/**"]
    subjects: [bob, "group:team-b"]
    actions: [pull, push, delete]
  - repos: ["secret/**"]
    subjects: [anonymous, authenticated]
    actions: []
  - repos: ["**"]
    subjects: [authenticated]
    actions: [pull]'
# berth_cfg NAME TOKEN ANON
berth_cfg() { { echo "upstreams: []"; echo "auth:"; echo "  htpasswd: $HT"; echo "  anonymous_pull: $3"
  [ "$2" = 1 ] && echo "  token: {}"; ldap_yaml; echo "$RULES"; } >"$RT/$1.yaml"; }
berth_cfg berth 1 true; berth_cfg berth2 1 false; berth_cfg berth3 0 true
export BERTH_E2E_LDAP_PW=admin-pw
declare -A PORTS
for n in berth berth2 berth3; do
  PORTS[$n]=$(free_port)
  start_bg "$n" "$ROOT/bin/berth" serve --config "$RT/$n.yaml" --addr "127.0.0.1:${PORTS[$n]}" --data "$RT/$n-data" --log-format json
  # /v2/ answers 401 with tokens: wait for any HTTP answer.
  for i in $(seq 300); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PORTS[$n]}/v2/")" != 000 ] && break; sleep 0.1; done
done
B=127.0.0.1:${PORTS[berth]} B2=127.0.0.1:${PORTS[berth2]} B3=127.0.0.1:${PORTS[berth3]}
BLOG=$RT/berth.log BERTH_PID=$(cat "$RT/berth.pid")
for n in berth berth2 berth3; do
  kill -0 "$(cat "$RT/$n.pid")" 2>/dev/null || { echo "auth-e2e: FAIL: $n did not start:"; tail -5 "$RT/$n.log"; exit 1; }
done
echo "auth-e2e: berth (token, anonymous pulls) http://$B; berth2 (token, no anonymous) http://$B2; berth3 (Basic) http://$B3"

# Per-user client configurations (crane reads DOCKER_CONFIG).
# $CR USER ARGS... : crane as USER (a script, so that step's timeout can run it).
CR=$RT/crane-as; printf '#!/bin/sh\nu=$1; shift; DOCKER_CONFIG=%s/crane-$u exec crane --insecure "$@"\n' "$RT" >"$CR"; chmod +x "$CR"
cr() { "$CR" "$@"; }
crane_login() { mkdir -p "$RT/crane-$1"; cr "$1" auth login "$2" -u "$1" -p "$1-pw" >/dev/null 2>&1; }
for h in "$B" "$B2" "$B3"; do crane_login alice "$h"; crane_login bob "$h"; done
# A base image in each berth, pushed by alice: team-a/base:latest.
for h in "$B" "$B2" "$B3"; do
  DOCKER_CONFIG=$RT/crane-alice "$ROOT/.ci/make-image.sh" "$h" team-a/base auth-e2e >"$RT/image-$h.txt" 2>&1 ||
    { echo "auth-e2e: FAIL: pushing the base image to $h as alice:"; cat "$RT/image-$h.txt"; exit 1; }
done
BASE=$(awk '$1=="latest"{print $2}' "$RT/image-$B.txt")
echo "auth-e2e: team-a/base:latest = $BASE"

# --- scenarios ------------------------------------------------------------------------

# Docker token flow at the HTTP level: challenge, grants, anonymous tokens.
sc_token() {
  local h; h=$(curl -s -D - -o /dev/null "http://$B/v2/" | tr -d '\r' | sed -n 's/^[Ww][Ww][Ww]-[Aa]uthenticate: //p')
  equal "the ping's challenge" "$h" "Bearer realm=\"http://$B/v2/token\",service=\"berth\""
  h=$(curl -s -D - -o /dev/null "http://$B/v2/team-a/base/manifests/latest" | tr -d '\r' | sed -n 's/^[Ww][Ww][Ww]-[Aa]uthenticate: //p')
  equal "a manifest's challenge names its scope" "$h" "Bearer realm=\"http://$B/v2/token\",service=\"berth\",scope=\"repository:team-a/base:pull\""
  local r; r=$(curl -s -u alice:alice-pw "http://$B/v2/token?service=berth&scope=repository:team-a/x:pull,push&scope=repository:team-b/x:pull,push")
  equal "alice is granted push on team-a only" "$(jq -r .scope <<<"$r")" "repository:team-a/x:pull,push repository:team-b/x:pull"
  r=$(curl -s "http://$B/v2/token?service=berth&scope=repository:team-a/base:pull,push&scope=repository:secret/x:pull")
  equal "an anonymous client is granted pull, not push, not secret/" "$(jq -r .scope <<<"$r")" "repository:team-a/base:pull"
  local tok; tok=$(jq -r .token <<<"$r")
  equal "the anonymous token pulls the manifest" \
    "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://$B/v2/team-a/base/manifests/latest")" 200
  r=$(curl -s "http://$B2/v2/token?service=berth&scope=repository:team-a/base:pull")
  equal "berth2 (anonymous_pull: false) grants anonymous clients nothing" "$(jq -r '.scope // ""' <<<"$r")" ""
  equal "a wrong password at the token endpoint is 401" \
    "$(curl -s -o /dev/null -w '%{http_code}' -u alice:wrong-pw "http://$B/v2/token?service=berth")" 401
  r=$(curl -s -u bob:bob-pw "http://$B/v2/token?service=berth&offline_token=true&client_id=e2e")
  check "offline_token=true returns a refresh token" '[ -n "$(jq -r ".refresh_token // empty" <<<"$r")" ]' "$r"
  r=$(curl -s -d grant_type=refresh_token -d service=berth -d client_id=e2e -d "scope=repository:team-b/x:push" \
      --data-urlencode "refresh_token=$(jq -r .refresh_token <<<"$r")" "http://$B/v2/token")
  equal "the refresh token buys bob push on team-b" "$(jq -r .scope <<<"$r")" "repository:team-b/x:push"
  equal "berth3 (Basic only) lets an anonymous /v2/ through" "$(curl -s -o /dev/null -w '%{http_code}' "http://$B3/v2/")" 200
  equal "berth3 has no token endpoint" "$(curl -s -o /dev/null -w '%{http_code}' "http://$B3/v2/token")" 404
}

# crane through the token flow (htpasswd users).
sc_crane() {
  crane_login bob "$B" || { S_FAILED=1; echo "  FAIL crane auth login bob"; }
  step "alice (crane) copies team-a/base to team-a/crane:1" "$CR" alice copy "$B/team-a/base:latest" "$B/team-a/crane:1" || return
  step_fails "alice (crane) may not push to team-b" 'denied|DENIED' "$CR" alice copy "$B/team-a/base:latest" "$B/team-b/crane:1"
  step "bob (crane) pulls team-a/crane:1 (authenticated pull)" "$CR" bob digest "$B/team-a/crane:1" && equal "digest" "$(cat "$OUT")" "$BASE"
  step "bob (crane) pushes to team-b/crane:1" "$CR" bob copy "$B/team-a/base:latest" "$B/team-b/crane:1"
  step_fails "bob (crane) may not delete alice's tag" 'denied|DENIED' "$CR" bob delete "$B/team-a/crane@$BASE"
  step "anonymous crane pulls team-a/base (anonymous_pull: true)" env DOCKER_CONFIG="$RT/none" crane --insecure digest "$B/team-a/base:latest"
  step_fails "anonymous crane may not pull from berth2 (anonymous_pull: false)" 'UNAUTHORIZED|401' \
    env DOCKER_CONFIG="$RT/none" crane --insecure digest "$B2/team-a/base:latest"
  step_fails "nobody pulls secret/ (a rule with no actions)" 'DENIED|UNAUTHORIZED|40[13]' "$CR" alice digest "$B/secret/x:1"
  step "crane catalog as bob lists what bob may pull" "$CR" bob catalog "$B" &&
    check "the catalog has team-a and team-b repositories" 'grep -qx team-a/base "$OUT" && grep -qx team-b/crane "$OUT"' "$(cat "$OUT")"
}

# LDAP users: carol (group team-a) and dave (group team-b).
sc_ldap() {
  [ -n "$LDAP_URL" ] || { unavailable "$LDAP_WHY"; return; }
  crane_login carol "$B" && crane_login dave "$B" || { echo "  FAIL crane auth login as LDAP users"; S_FAILED=1; return; }
  step "carol (LDAP, group:team-a) pushes team-a/ldap:1" "$CR" carol copy "$B/team-a/base:latest" "$B/team-a/ldap:1"
  step_fails "carol may not push to team-b" 'denied|DENIED' "$CR" carol copy "$B/team-a/base:latest" "$B/team-b/ldap:1"
  step "dave (LDAP, group:team-b) pushes team-b/ldap:1" "$CR" dave copy "$B/team-a/base:latest" "$B/team-b/ldap:1"
  step "dave pulls team-a/ldap:1 (authenticated pull)" "$CR" dave digest "$B/team-a/ldap:1"
  local r; r=$(curl -s -u carol:carol-pw "http://$B/v2/token?service=berth&scope=repository:team-a/x:push")
  equal "carol's token grants push on team-a" "$(jq -r .scope <<<"$r")" "repository:team-a/x:push"
  equal "a wrong LDAP password is 401" "$(curl -s -o /dev/null -w '%{http_code}' -u carol:nope "http://$B/v2/token?service=berth")" 401
  equal "an LDAP filter injection is refused" "$(curl -s -o /dev/null -w '%{http_code}' -u '*:carol-pw' "http://$B/v2/token?service=berth")" 401
  equal "Basic as an LDAP user on berth3" "$(curl -s -o /dev/null -w '%{http_code}' -u dave:dave-pw "http://$B3/v2/team-a/base/tags/list")" 200
}

# dockerd (insecure-registries for the three berths).
DX=$RT/docker
DK=(env DOCKER_CONFIG="$DX/cfg" docker -H "unix://$DX/docker.sock")
[ -x /usr/bin/docker ] && DK[2]=/usr/bin/docker
sc_docker() {
  need_root dockerd && need dockerd docker || return
  mkdir -p "$DX/cfg"
  start_bg dockerd dockerd --data-root "$DX/data" --exec-root "$DX/exec" --pidfile "$DX/docker.pid" -H "unix://$DX/docker.sock" \
    --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs \
    --insecure-registry "$B" --insecure-registry "$B2" --insecure-registry "$B3"
  local i up=0; for i in $(seq 120); do "${DK[@]}" version >/dev/null 2>&1 && { up=1; break; }; sleep 0.25; done
  [ $up = 1 ] || { tail -5 "$RT/dockerd.log" | sed 's/^/    | /'; unavailable "dockerd did not start (log $RT/dockerd.log)"; return; }
  step "anonymous docker pull $B/team-a/base (token flow, anonymous token)" "${DK[@]}" pull "$B/team-a/base:latest" || return
  step_fails "anonymous docker pull from berth2 is refused" 'unauthorized|authentication required|denied' "${DK[@]}" pull "$B2/team-a/base:latest"
  step "anonymous docker pull from berth3 (Basic only, anonymous_pull)" "${DK[@]}" pull "$B3/team-a/base:latest"
  step_fails "docker login with a wrong password fails" 'unauthorized|incorrect|denied' bash -c 'echo wrong | "$@" login -u alice --password-stdin "$0"' "$B" "${DK[@]}"
  step "docker login $B as alice" bash -c 'echo alice-pw | "$@" login -u alice --password-stdin "$0"' "$B" "${DK[@]}" || return
  step "docker push $B/team-a/docker:1" bash -c '"$@" tag "$0/team-a/base:latest" "$0/team-a/docker:1" && "$@" push "$0/team-a/docker:1"' "$B" "${DK[@]}"
  step_fails "docker push to team-b is denied" 'denied|unauthorized|requested access' \
    bash -c '"$@" tag "$0/team-a/base:latest" "$0/team-b/docker:1" && "$@" push "$0/team-b/docker:1"' "$B" "${DK[@]}"
  step "docker rmi + pull $B/team-a/docker:1" bash -c '"$@" rmi "$0/team-a/docker:1" && "$@" pull "$0/team-a/docker:1"' "$B" "${DK[@]}"
  step "docker login $B2 as bob (anonymous_pull off)" bash -c 'echo bob-pw | "$@" login -u bob --password-stdin "$0"' "$B2" "${DK[@]}" &&
    step "bob pulls from berth2 once logged in" "${DK[@]}" pull "$B2/team-a/base:latest"
  step "docker logout $B" "${DK[@]}" logout "$B"
  if [ -n "$LDAP_URL" ]; then
    step "docker login $B as dave (LDAP)" bash -c 'echo dave-pw | "$@" login -u dave --password-stdin "$0"' "$B" "${DK[@]}" &&
      step "dave pushes $B/team-b/docker:1" bash -c '"$@" tag "$0/team-a/base:latest" "$0/team-b/docker:1" && "$@" push "$0/team-b/docker:1"' "$B" "${DK[@]}"
    step_fails "dave may not push to team-a" 'denied|unauthorized|requested access' \
      bash -c '"$@" tag "$0/team-a/base:latest" "$0/team-a/dave:1" && "$@" push "$0/team-a/dave:1"' "$B" "${DK[@]}"
  fi
  stop_bg dockerd
  for m in $(awk -v r="$DX/" 'index($2, r)==1 {print $2}' /proc/mounts | sort -r); do umount "$m" 2>/dev/null; done
}

# podman (--tls-verify=false for plain HTTP).
PX=$RT/podman
POD=(podman --root "$PX/root" --runroot "$PX/run" --storage-driver=vfs --cgroup-manager=cgroupfs --events-backend=file --tmpdir "$PX/tmp")
sc_podman() {
  need_root podman && need podman || return
  mkdir -p "$PX/tmp"; : >"$PX/registries.conf"; export CONTAINERS_REGISTRIES_CONF=$PX/registries.conf REGISTRY_AUTH_FILE=$PX/auth.json
  echo '{}' >"$PX/auth.json"
  "${POD[@]}" info >"$PX/info.log" 2>&1 || { unavailable "podman does not work here (log $PX/info.log)"; return; }
  step "anonymous podman pull $B/team-a/base (token flow)" "${POD[@]}" pull --tls-verify=false "$B/team-a/base:latest" || return
  step_fails "anonymous podman pull from berth2 is refused" 'unauthorized|authentication required|denied' "${POD[@]}" pull --tls-verify=false "$B2/team-a/base:latest"
  step "anonymous podman pull from berth3 (Basic only)" "${POD[@]}" pull --tls-verify=false "$B3/team-a/base:latest"
  step "podman login $B as bob" "${POD[@]}" login --tls-verify=false -u bob -p bob-pw "$B" || return
  step "podman push $B/team-b/podman:1" bash -c '"$@" tag "$0/team-a/base:latest" "$0/team-b/podman:1" && "$@" push --tls-verify=false "$0/team-b/podman:1"' "$B" "${POD[@]}"
  step_fails "podman push to team-a is denied" 'denied|unauthorized|requested access' \
    bash -c '"$@" tag "$0/team-a/base:latest" "$0/team-a/podman:1" && "$@" push --tls-verify=false "$0/team-a/podman:1"' "$B" "${POD[@]}"
  step "podman rmi + pull $B/team-b/podman:1" bash -c '"$@" rmi "$0/team-b/podman:1" && "$@" pull --tls-verify=false "$0/team-b/podman:1"' "$B" "${POD[@]}"
  if [ -n "$LDAP_URL" ]; then
    step "podman login $B as carol (LDAP)" "${POD[@]}" login --tls-verify=false -u carol -p carol-pw "$B" &&
      step "carol pushes $B/team-a/podman:1" bash -c '"$@" tag "$0/team-a/base:latest" "$0/team-a/podman:1" && "$@" push --tls-verify=false "$0/team-a/podman:1"' "$B" "${POD[@]}"
  fi
  step "podman logout" "${POD[@]}" logout "$B"
  # Basic with anonymous pulls: /v2/ does not challenge, so podman (like
  # dockerd) sends no credentials and cannot push: berth says so at start.
  step "podman login $B3 as bob (Basic only)" "${POD[@]}" login --tls-verify=false -u bob -p bob-pw "$B3" &&
    step_fails "podman cannot push with Basic when /v2/ lets anonymous clients in" 'unauthorized' \
      bash -c 'b=$1; shift; "$@" tag "$0/team-a/base:latest" "$b/team-b/podman:1" && "$@" push --tls-verify=false "$b/team-b/podman:1"' "$B" "$B3" "${POD[@]}"
  check "berth3 warned about it at start" 'grep -q "never send theirs to push" "$RT/berth3.log"' ''
  step "crane sends Basic credentials unasked: bob pushes $B3/team-b/crane:1" "$CR" bob copy "$B3/team-a/base:latest" "$B3/team-b/crane:1"
}

# The OCI conformance suite, full profile, with alice's credentials through the token flow.
sc_conformance() {
  need conformance || return
  local out=$RT/conformance m; mkdir -p "$out"; m=$(mark "$BLOG")
  ( cd "$out" && env OCI_ROOT_URL="http://$B" OCI_REGISTRY="$B" OCI_TLS=disabled OCI_USERNAME=alice OCI_PASSWORD=alice-pw \
      OCI_REPO1=team-a/conf1 OCI_REPO2=team-a/conf2 OCI_NAMESPACE=team-a/conf1 OCI_CROSSMOUNT_NAMESPACE=team-a/conf2 \
      OCI_RESULTS_DIR="$out/results" OCI_VERSION=1.1 OCI_LOG=warn timeout 600 conformance >"$out/output.log" 2>&1 )
  sed -n '/^OCI Conformance Result/,/Total/p' "$out/output.log" | sed 's/^/  | /'
  check "conformance (full profile, token auth as alice): 0 failed" 'grep -q "^OCI Conformance Result: Pass" "$out/output.log"' \
    "$(grep -E '\.\.+:\s+(FAIL|Error)$' "$out/output.log" | head -20)"
  bexpect "the suite took tokens as alice from /v2/token" "$m" '.kind=="token" and .user=="alice" and .status==200'
  bexpect "and pushed with them" "$m" '.method=="PUT" and .kind=="manifest" and .user=="alice" and .status==201'
}

# Audit lines, and no password anywhere in the logs.
sc_audit() {
  curl -s -o /dev/null -u alice:wrong-pw "http://$B/v2/token?service=berth"
  local a; a=$(jq -c 'select(.audit==true)' "$BLOG" 2>/dev/null)
  check "a push by alice is audited" 'jq -se "any(.[]; .event==\"push\" and .user==\"alice\" and (.repo|startswith(\"team-a/\")) and (.digest|startswith(\"sha256:\")))" <<<"$a" >/dev/null' "$(head -5 <<<"$a")"
  check "a denied push is audited" 'jq -se "any(.[]; .event==\"denied\" and .action==\"push\" and (.repo|startswith(\"team-b/\")))" <<<"$a" >/dev/null' "$(head -5 <<<"$a")"
  check "a failed login is audited" 'jq -se "any(.[]; .event==\"login_failed\" and .user==\"alice\" and (.client|startswith(\"127.0.0.1:\")))" <<<"$a" >/dev/null' "$(head -5 <<<"$a")"
  check "no password in any berth log" '! grep -hE "(alice|bob|carol|dave|admin)-pw|wrong-pw" "$RT"/berth*.log' "$(grep -hE -- '-pw' "$RT"/berth*.log | head -3)"
}

# SIGHUP: a new rule gives bob push on team-a, for the next token.
sc_reload() {
  step_fails "before the reload bob may not push to team-a" 'denied|DENIED' "$CR" bob copy "$B/team-a/base:latest" "$B/team-a/bob:1"
  local m; m=$(mark "$BLOG")
  { echo "upstreams: []"; echo "auth:"; echo "  htpasswd: $HT"; echo "  anonymous_pull: true"; echo "  token: {}"; ldap_yaml
    echo "access:"; echo "  - repos: [\"team-a/**\"]"; echo "    subjects: [bob]"; echo "    actions: [pull, push]"; echo "$RULES" | tail -n +2; } >"$RT/berth.yaml"
  kill -HUP "$BERTH_PID"
  local i; for i in $(seq 100); do tail -n +$((m+1)) "$BLOG" | grep -q '"configuration reloaded"' && break; sleep 0.1; done
  check "berth reloaded the rules" 'tail -n +$((m+1)) "$BLOG" | grep "configuration reloaded" | grep -q access' "$(tail -n +$((m+1)) "$BLOG" | tail -3)"
  step "after the reload bob pushes to team-a" "$CR" bob copy "$B/team-a/base:latest" "$B/team-a/bob:1"
}

SCENARIOS=(token crane ldap docker podman conformance audit reload)
for s in "${SCENARIOS[@]}"; do
  if [ -n "${BERTH_E2E_ONLY:-}" ] && [[ " $BERTH_E2E_ONLY " != *" $s "* ]]; then continue; fi
  scenario "$s" "sc_$s"
done
echo; echo "auth-e2e summary:"
nfail=0
for r in "${RESULTS[@]}"; do echo "  $r"; [[ $r == FAIL* ]] && nfail=$((nfail+1)); done
echo "auth-e2e: total time $(( $(date +%s) - T0 ))s; state and logs in $RT"; E2E_DONE=1
[ "$nfail" -gt 0 ] && { echo "auth-e2e: $nfail scenario(s) FAILED"; exit 1; }
echo "auth-e2e: all scenarios passed or skipped"; E2E_OK=1
