#!/usr/bin/env bash
# Builds berth's small test images with no network access, from Debian's
# busybox-static, and pushes them with crane to a plain-HTTP registry.
#   make-image.sh HOST:PORT [REPO] [ORIGIN]
#     REPO    default library/busybox
#     ORIGIN  written to /etc/berth-e2e-origin in the image (default HOST:PORT),
#             so a container can tell which upstream its image came from;
#             different ORIGINs give different digests.
# Pushes REPO:latest  linux/amd64 image, Docker v2 schema 2 media types
#        REPO:oci     the same image with OCI media types
#        REPO:multi   OCI index of linux/amd64 (= :oci) + linux/arm64 (tag
#                     oci-arm64; it reuses the amd64 binary: a platform label
#                     for registry tests, it does not run on arm64)
# Prints "TAG DIGEST" per tag. Layers are built deterministically (fixed
# mtime and owners), so digests are stable across runs.
set -euo pipefail
REG=${1:?usage: make-image.sh HOST:PORT [REPO] [ORIGIN]}
REPO=${2:-library/busybox}
ORIGIN=${3:-$REG}
export PATH="$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin:$PATH"
command -v crane >/dev/null || { echo "make-image.sh: crane not found (make tools)" >&2; exit 1; }
BB=/bin/busybox
if [ ! -x "$BB" ] || ldd "$BB" >/dev/null 2>&1; then
  echo "make-image.sh: $BB missing or not static: apt-get install busybox-static" >&2; exit 1
fi
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$W/rootfs/bin" "$W/rootfs/tmp" "$W/rootfs/etc"
cp "$BB" "$W/rootfs/bin/busybox"
for a in sh ls cat echo true uname; do ln -sf busybox "$W/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$W/rootfs/etc/passwd"
echo "$ORIGIN" >"$W/rootfs/etc/berth-e2e-origin"
tar --sort=name --mtime='2020-01-01 00:00:00' --owner=0 --group=0 --numeric-owner \
  -C "$W/rootfs" -cf "$W/layer.tar" .
c() { crane --insecure "$@" 2>>"$W/crane.log" || { cat "$W/crane.log" >&2; return 1; }; }
I=$REG/$REPO
c append -f "$W/layer.tar" -t "$I:e2e-tmp-docker" >/dev/null
c mutate "$I:e2e-tmp-docker" --set-platform linux/amd64 --cmd /bin/sh -t "$I:latest" >/dev/null
c append --oci-empty-base -f "$W/layer.tar" -t "$I:e2e-tmp-oci" >/dev/null
c mutate "$I:e2e-tmp-oci" --set-platform linux/amd64 --cmd /bin/sh -t "$I:oci" >/dev/null
c mutate "$I:e2e-tmp-oci" --set-platform linux/arm64 --cmd /bin/sh -t "$I:oci-arm64" >/dev/null
c index append -m "$I:oci" -m "$I:oci-arm64" -t "$I:multi" >/dev/null
for t in e2e-tmp-docker e2e-tmp-oci; do   # the registry must allow deletes; harmless if not
  crane --insecure delete "$I@$(c digest "$I:$t")" 2>/dev/null || true
done
for t in latest oci multi; do echo "$t $(c digest "$I:$t")"; done
