"""``python -m pgaccess.seed`` (also ``pgaccess seed``): fill a database with seed data.

The seeders and named SQL directories, the environment and the role names default to the
project's configuration (``[tool.pgaccess]``, see ``pgaccess config``).

Exit codes: 0 seeded, 1 a seeder failed (nothing written) or seeding was refused, 2 usage.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..cli import (
    EXIT_OK,
    Progress,
    add_dsn,
    load_project,
    parser,
    print_json,
    resolve_dsn,
    role_dsns,
    run,
    table,
)
from ..database import Database
from ..errors import SeedError
from . import ENVIRONMENTS, DatabaseSeeder, discover_seeders


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(
        "pgaccess seed",
        "Run the project's seeders in dependency order, in one transaction.",
        "pgaccess seed --env development --scale 10 --seed 42",
    )
    add_dsn(p)
    p.add_argument("--env", choices=ENVIRONMENTS,
                   help="environment (default: $PGACCESS_ENV, else `seed_env` of [tool.pgaccess], "
                        "else development)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these seeders")
    p.add_argument("--fresh", action="store_true", help="empty the seeded tables first")
    p.add_argument("--scale", type=int, default=0, help="N extra tenants x 1,000 projects")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    p.add_argument("--dir", help="seeders directory (default: `seeders` of [tool.pgaccess])")
    p.add_argument("--sql", help="named SQL directory (default: `sql` of [tool.pgaccess])")
    p.add_argument("--allow-production", action="store_true",
                   help="allow seeding staging or production")
    p.add_argument("--json", action="store_true", help="print timings as JSON")
    args = p.parse_args(argv)

    async def body() -> int:
        project = load_project(seeders=args.dir, sql=args.sql, seed_env=args.env)
        if project.seed_env not in ENVIRONMENTS:
            raise SeedError(f"seed_env {project.seed_env!r} ({project.sources['seed_env']}) is not "
                            f"one of {', '.join(ENVIRONMENTS)}")
        if not project.seeders.is_dir():
            raise SeedError(f"no seeders directory {project.seeders} "
                            f"({project.sources['seeders']}); create it or set `seeders` in "
                            "[tool.pgaccess]")
        if str(project.root) not in sys.path:
            sys.path.insert(0, str(project.root))  # seeders import the project's own modules
        seeders = discover_seeders(project.seeders)
        owner = await resolve_dsn(args.dsn)
        app, admin = role_dsns(owner, project.roles)
        async with Database(project.settings(min_size=0), dsn=app, admin_dsn=admin,
                            sql_dir=project.existing("sql")) as db:
            bar = Progress("seeding")
            runner = DatabaseSeeder(
                db, seeders, env=project.seed_env, seed=args.seed, scale=args.scale, fresh=args.fresh,
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
