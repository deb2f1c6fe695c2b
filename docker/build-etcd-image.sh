#!/usr/bin/env bash
# Builds the etcd image of compose-ha.yaml (default tag: kvlab-etcd) from the
# etcd of Debian's `etcd-server` package installed on this machine: the
# binary and the shared libraries it links (ldd), at their own paths, in an
# image FROM scratch. Nothing is pulled: no image registry is involved, as for
# the kvlab image (docker/build-image.sh).
# Usage: docker/build-etcd-image.sh [TAG]
set -euo pipefail
tag="${1:-kvlab-etcd}"
etcd="$(command -v etcd || true)"
if [ -z "$etcd" ]; then
    echo "build-etcd-image: etcd is not installed: apt install etcd-server" >&2
    exit 1
fi
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/root"
cp "$etcd" "$ctx/root/etcd"
# Its shared libraries (glibc, the loader), where the binary looks for them.
for lib in $(ldd "$etcd" | grep -o '/[^ )]*'); do
    mkdir -p "$ctx/root$(dirname "$lib")"
    cp -L "$lib" "$ctx/root$lib"
done
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY root/ /
WORKDIR /data
VOLUME /data
# client, peer
EXPOSE 2379 2380
ENTRYPOINT ["/etcd"]
DOCKERFILE
docker build -q -t "$tag" "$ctx" >/dev/null
echo "build-etcd-image: $tag built from $("$etcd" --version | head -1) ($(docker image inspect "$tag" --format '{{.Size}}') bytes)"
