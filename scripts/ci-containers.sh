#!/usr/bin/env bash
# CI step for the fixtures' container path (docs/TESTING.md): Docker installed and started
# when missing, the local PostgreSQL image built once, then the core of the suite - fixtures,
# migrations, tenant isolation, a reliability test and the container tests - with every
# server in a container. No local PostgreSQL binaries are used: throwaway clusters would go
# to an empty scratch directory, which is checked to be still empty afterwards, and
# tests/test_containers.py asserts the server's data directory is inside the container.
#
# Usage: scripts/ci-containers.sh [extra pytest arguments]   (as root on a fresh machine)
# Exit codes: 0 green, 1 tests failed or a local cluster was started, 2 setup failed.
# Example: bash scripts/ci-containers.sh -x
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dockerd >/dev/null 2>&1; then
    echo "ci-containers: installing docker.io (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null || exit 2
fi
if ! docker info >/dev/null 2>&1; then
    echo "ci-containers: starting dockerd"
    nohup dockerd >/var/log/pgaccess-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { tail -n 20 /var/log/pgaccess-dockerd.log >&2; exit 2; }
fi

[ -x .venv/bin/python ] || scripts/bootstrap.sh
.venv/bin/python -c 'import testcontainers' 2>/dev/null \
    || .venv/bin/python -m pip install -q 'testcontainers>=4.15,<5' || exit 2

if ! .venv/bin/python - <<'EOF'
import docker, sys
try:
    docker.from_env().images.get("postgres:15")
except docker.errors.ImageNotFound:
    sys.exit(1)
EOF
then
    scripts/build-test-image.sh || exit 2
fi

scratch=$(mktemp -d /tmp/pgaccess-ci-scratch-XXXXXX)
trap 'rm -rf "$scratch"' EXIT
status=0
env -u PGACCESS_TEST_DSN PGACCESS_TEST_SERVER=container PGACCESS_TEST_TMPDIR="$scratch" \
    .venv/bin/python -m pytest -q -p no:cacheprovider -m "not citus" \
    tests/test_containers.py tests/test_fixtures.py tests/test_migrate.py tests/test_uow.py \
    tests/test_plugin.py -k "(tenant or not test_uow) and not leaves_no_throwaway_cluster" \
    "$@" || status=1
if [ -n "$(ls -A "$scratch")" ]; then
    echo "ci-containers: a local cluster was started in $scratch: $(ls -A "$scratch")" >&2
    status=1
fi
docker ps -aq --filter label=org.pgaccess.owner | grep -q . \
    && { echo "ci-containers: containers left behind:" >&2; docker ps -a --filter label=org.pgaccess.owner >&2; status=1; }
exit $status
