#!/usr/bin/env bash
# CI: build/install Citus into the local PostgreSQL 15 (idempotent, ~1 min the first time; needs
# root), then run the tests marked `citus` on a throwaway coordinator + 2 workers (~15 s).
# Exit code: the tests' (non-zero also when Citus cannot be built).
#   usage: scripts/ci-citus.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${PGACCESS_CITUS_BUILD:-../shared/citus/build.sh}
[[ -f $build ]] || build=/work/shared/citus/build.sh
if [[ ! -f $build ]]; then
  echo "ci-citus: $build not found (set PGACCESS_CITUS_BUILD to Citus's build.sh)" >&2; exit 2
fi
bash "$build"
exec .venv/bin/python -m pytest -q -m citus tests/test_citus.py "$@"
