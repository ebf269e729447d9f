# Test stand-in for the official `prom/prometheus` image, from Debian's prometheus package:
# the same entrypoint (the prometheus binary, arguments from compose), wget for the
# healthcheck, data in /prometheus. For scripts/compose-test only.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus && chown prometheus /prometheus
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
