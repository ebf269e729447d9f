# Test stand-in for the official `postgres` image, from Debian's postgresql package, honouring
# the part of its contract docker-compose.yml uses: POSTGRES_USER, POSTGRES_PASSWORD(_FILE),
# POSTGRES_DB, data in /var/lib/postgresql/data, pg_isready on the PATH. For
# scripts/compose-test only (no registry there); users run the official image.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY docker/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
