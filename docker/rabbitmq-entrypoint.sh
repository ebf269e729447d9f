#!/bin/sh
# The default user from RABBITMQ_DEFAULT_USER/PASS (reachable from other hosts, unlike guest),
# logs to stdout, then rabbitmq-server as PID 1.
set -eu
cat >/etc/rabbitmq/rabbitmq.conf <<CONF
default_user = ${RABBITMQ_DEFAULT_USER:-guest}
default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}
loopback_users = none
log.console = true
log.file = false
CONF
exec "$@"
