#!/usr/bin/env bash
# Runs the OCI distribution-spec conformance suite against a real `berth serve`.
#   conformance.sh full        berth with conformance/** local and nothing else configured; the suite's full
#                              default profile (sha512, referrers, subject included)
# Fails unless the suite reports 0 failed.
. "$(dirname "$0")/lib.sh"
PROFILE=${1:-full}
PORT=$(free_port)
# The suite tests a registry: its repositories are local (local: conformance/**),
# as a team's own are. Without that, a name the suite has not pushed yet is asked
# of the default upstream, docker.io, which this machine cannot reach: berth then
# answers 503 (upstream unavailable), where the suite wants a registry's 404.
start_bg berth "$ROOT/bin/berth" serve --addr 127.0.0.1:$PORT --data "$RT/data" --log-format json --log-level warn --local 'conformance/**' 
wait_http "http://127.0.0.1:$PORT/v2/"
OUT=$RT/conformance; mkdir -p "$OUT"
cd "$OUT"
set +e
env OCI_ROOT_URL=http://127.0.0.1:$PORT OCI_REGISTRY=127.0.0.1:$PORT OCI_TLS=disabled \
  OCI_REPO1=conformance/repo1 OCI_REPO2=conformance/repo2 OCI_NAMESPACE=conformance/repo1 \
  OCI_CROSSMOUNT_NAMESPACE=conformance/repo2 OCI_RESULTS_DIR="$OUT/results" OCI_VERSION=1.1 OCI_LOG=warn \
  conformance >"$OUT/output.log" 2>&1
rc=$?
set -e
sed -n '/^OCI Conformance Result/,/Total/p' "$OUT/output.log"
fails=$(grep -E '^  [A-Za-z].*\.\.+:\s+(FAIL|Error)$' "$OUT/output.log" || true)
if [ -n "$fails" ] || ! grep -q '^OCI Conformance Result: Pass' "$OUT/output.log"; then
  echo "$fails"; tail -50 "$OUT/output.log"; echo "berth log:"; tail -30 "$RT/berth.log"
  fail "conformance ($PROFILE): suite rc=$rc; full log $OUT/output.log"
fi
echo "conformance ($PROFILE): 0 failed"
