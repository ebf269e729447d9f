# demo-cloud: a real Keystone (identity v3, :5000) and Glance API (image v2, :9292) from PyPI,
# run by scripts/openstack-lab (see its header) -- the `demo-cloud` service of docker-compose.yml.
# Build context: the repo root.
#   docker build -f docker/demo-cloud.Dockerfile -t pimage-demo-cloud .
# Catalog endpoints name the host PIMAGE_LAB_PUBLIC_HOST (demo-cloud: the compose service name),
# so clients on the compose network reach both services through the catalog.
# Offline builds (scripts/compose-test) put wheels in docker/wheels/ of the context and pass
# --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/tmp/wheels (pip reads both).
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ENV PIMAGE_LAB_DIR=/var/lib/openstack-lab \
    PIMAGE_LAB_LISTEN_HOST=0.0.0.0 \
    PIMAGE_LAB_PUBLIC_HOST=demo-cloud

# The venv the script would create on first `up` ($PIMAGE_LAB_DIR/venv, same packages), built
# once here so the container starts without PyPI. Pin with e.g.
#   --build-arg PIMAGE_LAB_PIP_PKGS="glance==33.0.0 keystone==30.0.0 uwsgi==2.0.31"
# gcc, libc6-dev, python3-dev: pip compiles uwsgi from source; removed once it is built
# (libpython3.11 and libxml2 stay: uwsgi links them). The script needs curl, jq, ps (procps), ss
# (iproute2), flock and setsid (util-linux), plus coreutils/awk/base64/sha512sum.
ARG PIMAGE_LAB_PIP_PKGS="glance keystone uwsgi"
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
COPY docker/wheels /tmp/wheels
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv libpython3.11 libxml2 gcc libc6-dev python3-dev \
        ca-certificates curl jq procps iproute2 util-linux \
    && python3 -m venv "$PIMAGE_LAB_DIR/venv" \
    && "$PIMAGE_LAB_DIR/venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check $PIMAGE_LAB_PIP_PKGS \
    && test -x "$PIMAGE_LAB_DIR/venv/bin/uwsgi" \
    && "$PIMAGE_LAB_DIR/venv/bin/python" -c 'import glance, keystone, keystonemiddleware' \
    && apt-get purge -y --auto-remove gcc libc6-dev python3-dev \
    && rm -rf /var/lib/apt/lists/* /tmp/wheels

# after the venv, so editing the script does not rebuild it
COPY scripts/openstack-lab /opt/pimage/scripts/openstack-lab
RUN chmod 755 /opt/pimage/scripts/openstack-lab
WORKDIR /opt/pimage

EXPOSE 5000 9292
# `status` fails until `up` has seeded the users/projects/endpoints and passed its smoke test
HEALTHCHECK --interval=10s --timeout=10s --start-period=60s --retries=30 \
    CMD ["/opt/pimage/scripts/openstack-lab", "status"]
# PID 1: starts keystone + glance, seeds, smoke-tests, then waits; SIGTERM (docker stop) stops
# both uwsgi masters and exits 0; if either dies, the other is stopped and the container exits 1
CMD ["/opt/pimage/scripts/openstack-lab", "up", "--foreground"]
