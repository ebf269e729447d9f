# pimage: one small runtime image for every role (api, worker, migrate, admin commands).
# Build: docker build -t pimage .
# Base images are build arguments (scripts/compose-test builds offline from local ones).
# The runtime stage comes first: `--target runtime` then builds nothing else, even with the
# legacy builder, and docker/prebuilt.Dockerfile puts the host's release binary on top of it.
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-bookworm

FROM ${RUNTIME_IMAGE} AS runtime
# qemu-utils: qemu-img, for profiles that convert images to the disk format a cloud wants.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 curl qemu-utils \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/pimage pimage \
    && mkdir -p /var/lib/pimage/images && chown -R pimage /var/lib/pimage
# Only the defaults: config/dev.toml holds the public development key, which never ships.
# The key comes from the environment (PIMAGE__SECRETS__KEY).
COPY config/default.toml /etc/pimage/default.toml
ENV PIMAGE_CONFIG_DIR=/etc/pimage \
    PIMAGE__STORAGE__URL=/var/lib/pimage/images \
    PIMAGE__API__LISTEN=0.0.0.0:8080
USER pimage
WORKDIR /var/lib/pimage
EXPOSE 8080 9101
ENTRYPOINT ["/usr/local/bin/pimage"]
CMD ["api"]

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The dependencies in a layer of their own, from the manifests and empty mains (xtask is a
# workspace member, so its manifest too): a change in src/ leaves this layer cached.
COPY Cargo.toml Cargo.lock ./
COPY xtask/Cargo.toml xtask/Cargo.toml
RUN mkdir -p src xtask/src && echo 'fn main() {}' >src/main.rs && cp src/main.rs xtask/src/main.rs \
    && cargo build --release --locked -p pimage && rm -rf src
COPY src src
COPY migrations migrations
# Compiled in (config.rs: the defaults).
COPY config/default.toml config/default.toml
# The offline cache of the compile-time checked SQL: this build has no database.
COPY .sqlx .sqlx
# touch: COPY keeps the files' times, which may be older than the empty main's build.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked -p pimage && strip target/release/pimage

FROM runtime
COPY --from=build /src/target/release/pimage /usr/local/bin/pimage
