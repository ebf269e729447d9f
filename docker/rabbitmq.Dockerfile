# Test stand-in for the official `rabbitmq:…-management` image, from Debian's rabbitmq-server
# package, honouring the part of its contract docker-compose.yml uses: RABBITMQ_DEFAULT_USER,
# RABBITMQ_DEFAULT_PASS, the management plugin on 15672, rabbitmq-diagnostics on the PATH
# (run as the server's user, whose Erlang cookie it needs). For scripts/compose-test only.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/* \
    && echo '[rabbitmq_management].' >/etc/rabbitmq/enabled_plugins \
    && chown -R rabbitmq:rabbitmq /etc/rabbitmq /var/lib/rabbitmq
COPY docker/rabbitmq-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# HOME: where rabbitmq-diagnostics (the healthcheck) finds the cookie
ENV HOME=/var/lib/rabbitmq
USER rabbitmq
EXPOSE 5672 15672
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["rabbitmq-server"]
