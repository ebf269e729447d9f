# pimage: one small runtime image for every role (api, worker, migrate, admin commands).
# Build: docker build -t pimage .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
# The offline cache of the compile-time checked SQL: this build has no database.
COPY .sqlx .sqlx
RUN cargo build --release --locked && strip target/release/pimage

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/pimage pimage \
    && mkdir -p /var/lib/pimage/images && chown -R pimage /var/lib/pimage
COPY --from=build /src/target/release/pimage /usr/local/bin/pimage
COPY config /etc/pimage
ENV PIMAGE_CONFIG_DIR=/etc/pimage \
    PIMAGE__STORAGE__IMAGE_DIR=/var/lib/pimage/images \
    PIMAGE__API__LISTEN=0.0.0.0:8080
USER pimage
WORKDIR /var/lib/pimage
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/pimage"]
CMD ["api"]
