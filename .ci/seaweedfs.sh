#!/usr/bin/env bash
# SeaweedFS as a real S3 server for the cluster tests and bench.
#   seaweedfs.sh build     build the pinned version once (cached in ~/.cache/seaweedfs;
#                          ~3.5 min and 2.6 GB RAM cold on 2 cores, nothing warm)
#   seaweedfs.sh start     build if needed, start `weed mini` on a free 127.0.0.1 port with
#                          bucket berth-ci, and print the exports a test evals:
#                          eval "$(.ci/seaweedfs.sh start)"  (stop: kill $(cat "$SW_DIR/weed.pid"))
#   seaweedfs.sh run       the same in the foreground: prints the exports line first, then
#                          runs weed (the caller polls for the bucket berth-ci; bench/cluster.go)
# Quirks: `go install` refuses the module (it has a replace line), so it is built inside
# the downloaded module; -ip/-ip.bind keep it on loopback, -master.telemetry=false keeps it
# from phoning home; S3 answers ~5 s after start; one bucket per store, a prefix per test.
set -euo pipefail
SW_VERSION=v0.0.0-20261109003541-7506e5f91cd6
SW_BIN=${SW_BIN:-$HOME/.cache/seaweedfs/weed-$SW_VERSION}

build() {
  [ -x "$SW_BIN" ] && return 0
  mkdir -p "$(dirname "$SW_BIN")"
  # One build at a time: a second caller waits for the first one's binary.
  exec 9>"$SW_BIN.lock"
  flock 9
  [ -x "$SW_BIN" ] && return 0
  echo "building SeaweedFS $SW_VERSION into $SW_BIN (a few minutes, once)" >&2
  local src
  src=$(cd /tmp && go mod download -json "github.com/seaweedfs/seaweedfs@$SW_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -n "$src" ] || { echo "seaweedfs: go mod download failed" >&2; return 1; }
  (cd "$src" && go build -ldflags="-s -w" -o "$SW_BIN.tmp" ./weed) && mv "$SW_BIN.tmp" "$SW_BIN"
}

start() {
  local fg=${1:-}
  build
  SW_DIR=${SW_DIR:-$(mktemp -d /tmp/seaweedfs.XXXXXX)}; mkdir -p "$SW_DIR"
  # Every port weed mini opens is picked free, so that several stores (other
  # tests, other users of the machine) can run at once.
  local ports port
  ports=($(python3 -c 'import socket
ss=[socket.socket() for _ in range(11)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))'))
  port=${SW_S3_PORT:-${ports[0]}}
  cat >"$SW_DIR/s3.json" <<JSON
{"identities":[{"name":"ci","credentials":[{"accessKey":"testkey","secretKey":"testsecret"}],
  "actions":["Admin","Read","List","Tagging","Write"]}]}
JSON
  local exports="export S3_ENDPOINT=http://127.0.0.1:$port S3_BUCKET=berth-ci AWS_ACCESS_KEY_ID=testkey AWS_SECRET_ACCESS_KEY=testsecret AWS_REGION=us-east-1 SW_DIR=$SW_DIR"
  local args=(mini -dir="$SW_DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$port" -s3.port.grpc="${ports[1]}" -master.port="${ports[2]}" -master.port.grpc="${ports[3]}" \
    -volume.port="${ports[4]}" -volume.port.grpc="${ports[5]}" -filer.port="${ports[6]}" -filer.port.grpc="${ports[7]}" \
    -admin.port="${ports[8]}" -admin.port.grpc="${ports[9]}" -admin.port.legacy=0 -debug.port="${ports[10]}" \
    -s3.config="$SW_DIR/s3.json" -master.telemetry=false \
    -master.volumeSizeLimitMB=64 -volume.max=2000 \
    -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -bucket=berth-ci)
  if [ "$fg" = fg ]; then echo "$exports"; GOMEMLIMIT=384MiB exec "$SW_BIN" "${args[@]}"; fi
  GOMEMLIMIT=384MiB setsid "$SW_BIN" "${args[@]}" >"$SW_DIR/weed.log" 2>&1 </dev/null &
  echo $! >"$SW_DIR/weed.pid"
  local ok=
  for _ in $(seq 1 600); do
    # S3 answers before weed mini has made the bucket: wait for the bucket.
    if [ "$(curl -s -o /dev/null -w '%{http_code}' -I --aws-sigv4 aws:amz:us-east-1:s3 --user testkey:testsecret \
      "http://127.0.0.1:$port/berth-ci")" = 200 ]; then ok=1; break; fi
    kill -0 "$(cat "$SW_DIR/weed.pid")" 2>/dev/null || break
    sleep 0.2
  done
  [ -n "$ok" ] || { echo "seaweedfs did not answer on :$port; log $SW_DIR/weed.log:" >&2; tail -20 "$SW_DIR/weed.log" >&2; return 1; }
  echo "$exports"
}

case "${1:-start}" in
  build) build ;;
  start) start ;;
  run) start fg ;;
  *) echo "usage: $0 build|start|run" >&2; exit 2 ;;
esac
