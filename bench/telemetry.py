"""What OpenTelemetry costs pgaccess: W1 with telemetry off, on with the API's no-op
providers, on with the SDK (spans to a no-op exporter through the batch processor, metrics
aggregated in memory), and the same SDK sampling 10% of traces, side by side in one run.

    python -m bench.telemetry            # throwaway cluster, 8 rounds of 0.5 s bursts
    python -m bench.telemetry --smoke    # one short round: CI runs this so it cannot rot
    python -m bench.telemetry --dsn URL  # against your server (a superuser DSN)

Each burst of an "on" variant runs between two bursts of "off" on the same pool size, and
its ratio is its ops/s over the mean of those two (median over rounds), as in ``python -m
bench``. ratio 1.00 = no measurable cost; 0.90 = 10% fewer operations per second. No
assertions: numbers are reported, never tested.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from pgaccess import Database, Settings
from pgaccess.config import with_user
from pgaccess.devdb.clone import drop_database
from pgaccess.devdb.servers import start_test_server
from pgaccess.reference import ProjectRepository
from pgaccess.telemetry import Telemetry

from .__main__ import Env, Op, Result, interleaved, prepare

OFF = "off"
NOOP = "on, API only (no SDK installed)"
SDK = "on, SDK + no-op exporter"
SAMPLED = "on, SDK, 10% of traces sampled"


class NoopExporter(SpanExporter):
    """Receives every finished span and drops it: the SDK's whole cost, no I/O."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


def sdk_telemetry(sampler: Any = None) -> tuple[Telemetry, NoopExporter, TracerProvider]:
    exporter = NoopExporter()
    tracer_provider = TracerProvider(sampler=sampler)
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return (Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider),
            exporter, tracer_provider)


async def measure(env: Env, rounds: int, burst: float, pool_size: int) -> list[tuple[str, int, list[Result]]]:
    app, admin = with_user(env.owner_dsn, "pgaccess_app"), with_user(env.owner_dsn, "pgaccess_admin")
    settings = Settings(min_size=pool_size, max_size=pool_size, acquire_timeout=30)
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.trace import NoOpTracerProvider

    telemetry, exporter, tracer_provider = sdk_telemetry()
    sampled, _, sampled_provider = sdk_telemetry(ParentBased(TraceIdRatioBased(0.1)))
    variants = {
        OFF: None,
        NOOP: Telemetry(tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider()),
        SDK: telemetry,
        SAMPLED: sampled,
    }
    dbs = {name: await Database(settings, dsn=app, admin_dsn=admin, sql_dir="sql",
                                telemetry=t).open() for name, t in variants.items()}
    tenants, projects = env.tenants, env.projects

    def pick(i: int) -> tuple[uuid.UUID, uuid.UUID]:
        t = tenants[i % len(tenants)]
        ids = projects[t]
        return t, ids[(i * 7919) % len(ids)]

    def uow(db: Database) -> Op:
        async def op(i: int) -> Any:
            t, p = pick(i)
            async with db.transaction(tenant=t) as unit:
                return await unit.repo(ProjectRepository).find_by_id(p)
        return op

    def autocommit(db: Database) -> Op:
        async def op(i: int) -> Any:
            t, p = pick(i)
            return await db.autocommit(tenant=t).repo(ProjectRepository).find_by_id(p)
        return op

    workloads = {"W1 point lookup, unit of work": uow, "W1 point lookup, autocommit": autocommit}
    out = []
    try:
        for workload, make in workloads.items():
            ops = {name: make(db) for name, db in dbs.items()}
            for concurrency in (1, 16):
                results = await interleaved(ops, OFF, concurrency, rounds, burst)
                out.append((workload, concurrency, results))
                print(render(workload, concurrency, results), flush=True)
    finally:
        for db in dbs.values():
            await db.close()
        tracer_provider.shutdown()
        sampled_provider.shutdown()
    print(f"\nspans exported by the SDK variant: {exporter.exported:,}")
    return out


def render(workload: str, concurrency: int, results: list[Result]) -> str:
    lines = [f"\n### {workload} - concurrency {concurrency}\n",
             "| telemetry | ops/s | p50 ms | p99 ms | ratio to off |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r.impl} | {r.ops_per_s:,.0f} | {r.pct(0.5):.3f} | {r.pct(0.99):.3f} | "
                     f"{r.ratio:.2f} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    server = None
    if args.dsn:
        server_dsn = args.dsn
    else:
        server = start_test_server()
        server_dsn = server.dsn
    try:
        tenants = 3 if args.smoke else 20
        print(f"preparing {tenants} tenants x 1,000 projects ...", flush=True)
        env = await prepare(server_dsn, None, tenants, args.smoke)
        try:
            await measure(env, 1 if args.smoke else args.rounds, 0.1 if args.smoke else args.burst,
                          pool_size=10)
        finally:
            await drop_database(server_dsn, urlsplit(env.owner_dsn).path.lstrip("/"))
            await drop_database(server_dsn, urlsplit(env.signed_dsn).path.lstrip("/"))
    finally:
        if server is not None:
            server.stop()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.telemetry", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: python -m bench.telemetry --rounds 4 --burst 0.3")
    p.add_argument("--dsn", help="superuser DSN of a server to use (default: a throwaway cluster)")
    p.add_argument("--smoke", action="store_true", help="tiny data, one short round (CI)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--burst", type=float, default=0.5, help="seconds per variant per round")
    args = p.parse_args()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
