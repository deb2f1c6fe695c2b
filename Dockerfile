# kvlab as a container image: FROM scratch, nothing in it but one statically
# linked binary. No image registry is involved (nothing is pulled): the image
# is built only from what this repository compiles. docker/build-image.sh does
# both steps:
#
#   RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile docker \
#       --target x86_64-unknown-linux-gnu --bin kvlab
#   docker build -t kvlab .
#
# The `docker` profile (Cargo.toml) is optimised without fat LTO, so that CI
# builds it in minutes. .dockerignore sends only the binary as build context.
#
# Scratch has no /tmp, no shell and no users: every directory kvlab writes to
# is given explicitly. /data is the volume: a node keeps its log and snapshots
# there (`--data-dir /data`), `kvlab up` its node logs (`--log-dir /data/logs`).
FROM scratch
COPY target/x86_64-unknown-linux-gnu/docker/kvlab /kvlab
# WORKDIR creates the directory (there is no shell to mkdir with); TMPDIR
# points kvlab's default directories there too.
WORKDIR /data
ENV TMPDIR=/data
VOLUME /data
# coordinator, leader (followers take the next ports), gateway, registry
EXPOSE 7000 7001 8000 9000
ENTRYPOINT ["/kvlab"]
CMD ["--help"]
