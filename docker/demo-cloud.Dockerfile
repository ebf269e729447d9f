# demo-cloud: a real Keystone (identity v3, :5000) and Glance API (image v2, :9292) from PyPI,
# run by scripts/openstack-lab (see its header) -- the `demo-cloud` service of docker-compose.yml.
# Build context: the repo root.
#   docker build -f docker/demo-cloud.Dockerfile -t pimage-demo-cloud .
# Catalog endpoints name the host PIMAGE_LAB_PUBLIC_HOST (demo-cloud: the compose service name),
# so clients on the compose network reach both services through the catalog.
FROM python:3.11-slim-bookworm

# gcc + libc6-dev: pip compiles uwsgi from source (this image ships the Python headers and
# libpython). The script needs curl, jq, ps (procps), ss (iproute2), flock and setsid
# (util-linux), plus coreutils/awk/base64/sha512sum, already in the base image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        gcc libc6-dev ca-certificates curl jq procps iproute2 util-linux \
    && rm -rf /var/lib/apt/lists/*

ENV PIMAGE_LAB_DIR=/var/lib/openstack-lab \
    PIMAGE_LAB_LISTEN_HOST=0.0.0.0 \
    PIMAGE_LAB_PUBLIC_HOST=demo-cloud

# The venv the script would create on first `up` ($PIMAGE_LAB_DIR/venv, same packages), built
# once here so the container starts without PyPI. Pin with e.g.
#   --build-arg PIMAGE_LAB_PIP_PKGS="glance==33.0.0 keystone==30.0.0 uwsgi==2.0.31"
ARG PIMAGE_LAB_PIP_PKGS="glance keystone uwsgi"
RUN python3 -m venv "$PIMAGE_LAB_DIR/venv" \
    && "$PIMAGE_LAB_DIR/venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check --upgrade pip \
    && "$PIMAGE_LAB_DIR/venv/bin/pip" install -q --no-cache-dir --disable-pip-version-check $PIMAGE_LAB_PIP_PKGS \
    && test -x "$PIMAGE_LAB_DIR/venv/bin/uwsgi" \
    && "$PIMAGE_LAB_DIR/venv/bin/python" -c 'import glance, keystone, keystonemiddleware'

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
