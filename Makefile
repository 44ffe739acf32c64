# pgaccess - the two front-door commands are `make demo` and `make test`.
.PHONY: setup demo test test-citus test-containers lint check bench bench-smoke bench-citus bench-citus-smoke bench-telemetry reliability clean

setup:
	@scripts/bootstrap.sh

## demo: migrate and seed the embedded dev cluster (.pgaccess/), run tenant-scoped queries,
## print the health report.
demo: setup
	.venv/bin/python -m pgaccess demo

## test: the whole test suite against a private throwaway PostgreSQL, plus lint and types.
test: setup
	.venv/bin/python -m pytest -q
	$(MAKE) --no-print-directory lint

lint:
	.venv/bin/ruff check pgaccess tests seeders examples bench
	.venv/bin/python -m pgaccess.migrate --dir migrations lint --files-only
	.venv/bin/mypy pgaccess
	.venv/bin/mypy --strict examples/service.py
	.venv/bin/python -m pgaccess.queries check --rows pgaccess.reference.rows
	.venv/bin/python -m pgaccess.queries check --offline --rows pgaccess.reference.rows
	.venv/bin/python -m pgaccess.queries gen --out pgaccess/reference/rows.py --check

## test-citus: the `citus` tests on a throwaway coordinator + 2 workers (builds Citus once).
test-citus: setup
	bash scripts/ci-citus.sh

## test-containers: the suite's core with every server in a Docker container.
test-containers: setup
	bash scripts/ci-containers.sh

check: test

bench: setup
	.venv/bin/python -m bench

bench-smoke: setup
	.venv/bin/python -m bench --smoke
	.venv/bin/python -m bench.telemetry --smoke

bench-telemetry: setup
	.venv/bin/python -m bench.telemetry

bench-citus: setup
	bash ../shared/citus/build.sh  # once; does nothing when Citus is installed
	.venv/bin/python -m bench.citus

## bench-citus-smoke: after test-citus (which builds Citus)
bench-citus-smoke: setup
	.venv/bin/python -m bench.citus --smoke

reliability: setup
	PGACCESS_SOAK_SECONDS=180 .venv/bin/python -m pytest -q -s tests/test_reliability.py tests/test_security.py tests/test_fuzz.py

clean:
	rm -rf .venv .pgaccess .pytest_cache .mypy_cache .ruff_cache
