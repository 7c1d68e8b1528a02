#!/usr/bin/env bash
# Installs the Go-built tools the tests drive, at pinned versions, into
# $(go env GOPATH)/bin; skips what is already there at that version.
set -euo pipefail
GOBIN=$(go env GOPATH)/bin; mkdir -p "$GOBIN"
have() { [ -x "$GOBIN/$1" ] && [ -f "$GOBIN/.$1.version" ] && [ "$(cat "$GOBIN/.$1.version")" = "$2" ]; }
inst() { local name=$1 pkg=$2 ver=$3
  have "$name" "$ver" && return 0
  echo "installing $name $ver"; GOBIN=$GOBIN go install "$pkg@$ver"; echo "$ver" >"$GOBIN/.$name.version"; }
inst conformance github.com/opencontainers/distribution-spec/conformance v0.0.0-20260831232431-97274622c111
inst registry github.com/distribution/distribution/v3/cmd/registry v3.1.2
inst crane github.com/google/go-containerregistry/cmd/crane v0.22.1
inst staticcheck honnef.co/go/tools/cmd/staticcheck v0.8.2
inst oras oras.land/oras/cmd/oras v1.3.6
inst regctl github.com/regclient/regclient/cmd/regctl v0.11.7
bash "$(dirname "$0")/seaweedfs.sh" build   # the S3 server of the cluster tests
