#!/usr/bin/env bash
# Builds the kvlab container image from scratch: a statically linked kvlab
# (the `docker` cargo profile: optimised, no fat LTO) in an empty image.
# Usage: docker/build-image.sh [TAG]   (default tag: kvlab)
# Prints how long each step took and the image's size.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-kvlab}"
target=x86_64-unknown-linux-gnu

start=$(date +%s)
# crt-static links glibc in; only the target's artifacts get the flag
# (build scripts and proc macros of the host are unaffected).
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --profile docker --target "$target" --bin kvlab
built=$(date +%s)
binary="target/$target/docker/kvlab"
if ldd "$binary" 2>&1 | grep -q '=>'; then
    echo "build-image: $binary is dynamically linked; it would not run FROM scratch" >&2
    exit 1
fi
docker build -q -t "$tag" . >/dev/null
done_at=$(date +%s)
size=$(docker image inspect "$tag" --format '{{.Size}}')
echo "build-image: $tag built: binary $((built - start)) s, image $((done_at - built)) s, size $((size / 1024 / 1024)) MiB ($size bytes)"
