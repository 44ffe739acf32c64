"""``python -m pgaccess.seed`` (also ``pgaccess seed``): fill a database with seed data.

Exit codes: 0 seeded, 1 a seeder failed (nothing written) or seeding was refused, 2 usage.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..cli import EXIT_OK, Progress, add_dsn, parser, print_json, resolve_dsn, role_dsns, run, table
from ..config import Settings
from ..database import Database
from . import ENVIRONMENTS, SeedRunner, discover_seeders


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(
        "pgaccess seed",
        "Run the project's seeders in dependency order, in one transaction.",
        "python -m pgaccess.seed --env development --scale 10 --seed 42",
    )
    add_dsn(p)
    p.add_argument("--env", choices=ENVIRONMENTS, default=os.environ.get("PGACCESS_ENV", "development"),
                   help="environment (default: $PGACCESS_ENV or development)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these seeders")
    p.add_argument("--fresh", action="store_true", help="empty the seeded tables first")
    p.add_argument("--scale", type=int, default=0, help="N extra tenants x 1,000 projects")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    p.add_argument("--dir", default="seeders", help="seeders directory (default: seeders)")
    p.add_argument("--sql", default="sql", help="named SQL directory (default: sql)")
    p.add_argument("--allow-production", action="store_true",
                   help="allow seeding staging or production")
    p.add_argument("--json", action="store_true", help="print timings as JSON")
    args = p.parse_args(argv)

    async def body() -> int:
        owner = await resolve_dsn(args.dsn)
        app, admin = role_dsns(owner)
        seeders = discover_seeders(args.dir)
        async with Database(Settings(min_size=0), dsn=app, admin_dsn=admin,
                            sql_dir=args.sql if os.path.isdir(args.sql) else None) as db:
            bar = Progress("seeding")
            runner = SeedRunner(
                db, seeders, env=args.env, seed=args.seed, scale=args.scale, fresh=args.fresh,
                only=args.only, allow_production=args.allow_production,
                progress=lambda name, done, total: bar(done - 1, total),
            )
            timings = await runner.run()
            bar(len(timings), len(timings))
        if args.json:
            print_json({"seeded": timings})
        else:
            print(table(["seeder", "seconds"], [(k, f"{v:.3f}") for k, v in timings.items()]))
        return EXIT_OK

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
