"""Nullability of result columns, over many query shapes: the same answer as owner and as
the app role, on an empty and on a loaded database, whatever plan the planner is forced into."""

from __future__ import annotations

from urllib.parse import urlencode

import asyncpg
import pytest

from pgaccess.config import with_user
from pgaccess.queries import load_queries_from_str
from pgaccess.queries.check import check_queries

SCHEMA = """
CREATE TABLE sh_a (id int PRIMARY KEY, x text NOT NULL, y text);
CREATE TABLE sh_b (id int PRIMARY KEY, a_id int NOT NULL REFERENCES sh_a, z text NOT NULL, n int);
CREATE TABLE sh_c (id int PRIMARY KEY, b_id int NOT NULL, w text NOT NULL);
CREATE VIEW sh_v AS SELECT a.id, a.x, b.z FROM sh_a a LEFT JOIN sh_b b ON b.a_id = a.id;
CREATE VIEW sh_vi WITH (security_invoker = true) AS SELECT a.id, a.x, a.y, b.z AS bz
    FROM sh_a a JOIN sh_b b ON b.a_id = a.id;
ALTER TABLE sh_c ENABLE ROW LEVEL SECURITY;
CREATE POLICY sh_c_all ON sh_c USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON sh_a, sh_b, sh_c, sh_v, sh_vi TO pgaccess_app;
"""
LOAD = """
INSERT INTO sh_a SELECT i, 'x' || i, CASE WHEN i % 3 = 0 THEN NULL ELSE 'y' END
    FROM generate_series(1, 3000) i;
INSERT INTO sh_b SELECT i, 1 + i % 2000, 'z', NULLIF(i % 5, 0) FROM generate_series(1, 4000) i;
INSERT INTO sh_c SELECT i, 1 + i % 3000, 'w' FROM generate_series(1, 2000) i;
ANALYZE;
"""

N, Y = False, True  # not NULL-able / NULL-able
SHAPES: list[tuple[str, str, list[bool]]] = [
    ("plain_sorted_limited", "SELECT id, x, y FROM sh_a ORDER BY x DESC, id LIMIT :lim", [N, N, Y]),
    ("qualified_alias", "SELECT a.id, a.x, a.y FROM sh_a AS a WHERE a.id = :id", [N, N, Y]),
    ("inner_join", "SELECT a.x, b.z, b.n FROM sh_a a JOIN sh_b b ON b.a_id = a.id", [N, N, Y]),
    ("left_join", "SELECT a.x, b.z FROM sh_a a LEFT JOIN sh_b b ON b.a_id = a.id", [N, Y]),
    ("left_join_where_rejects_null",  # the planner turns it into an inner join; we stay safe
     "SELECT a.x, b.z FROM sh_a a LEFT JOIN sh_b b ON b.a_id = a.id WHERE b.z = 'z'", [N, Y]),
    ("right_join", "SELECT a.x, b.z FROM sh_a a RIGHT JOIN sh_b b ON b.a_id = a.id", [Y, N]),
    ("full_join", "SELECT a.x, b.z FROM sh_a a FULL JOIN sh_b b ON b.a_id = a.id", [Y, Y]),
    ("cross_join", "SELECT a.x, c.w FROM sh_a a CROSS JOIN sh_c c LIMIT 5", [N, N]),
    ("comma_join", "SELECT a.x, c.w FROM sh_a a, sh_c c WHERE c.id = a.id", [N, N]),
    ("using_star", "SELECT * FROM sh_a JOIN sh_c USING (id)", [N, N, Y, N, N]),
    ("full_join_using", "SELECT id FROM sh_a FULL JOIN sh_c USING (id)", [N]),
    ("natural_left", "SELECT id, w FROM sh_a NATURAL LEFT JOIN sh_c", [N, Y]),
    ("nested_join_on_nullable_side",
     "SELECT a.x, b.z, c.w FROM sh_a a LEFT JOIN (sh_b b JOIN sh_c c ON c.b_id = b.id) "
     "ON b.a_id = a.id", [N, Y, Y]),
    ("chained_left_then_inner",
     "SELECT a.x, b.z, c.w FROM sh_a a LEFT JOIN sh_b b ON b.a_id = a.id "
     "JOIN sh_c c ON c.b_id = b.id", [N, Y, N]),
    ("lateral", "SELECT a.x, l.z FROM sh_a a LEFT JOIN LATERAL "
     "(SELECT b.z FROM sh_b b WHERE b.a_id = a.id LIMIT 1) l ON true", [N, Y]),
    ("subquery_in_from", "SELECT s.x, s.yy FROM (SELECT x, y AS yy FROM sh_a) s", [N, Y]),
    ("scalar_subqueries",
     "SELECT (SELECT count(*) FROM sh_b), (SELECT max(z) FROM sh_b), "
     "(SELECT z FROM sh_b WHERE id = a.id), EXISTS (SELECT 1 FROM sh_b), "
     "ARRAY(SELECT z FROM sh_b WHERE a_id = a.id) FROM sh_a a", [N, Y, Y, N, N]),
    ("in_subquery", "SELECT a.id IN (SELECT a_id FROM sh_b) AS has_b, "
     "a.y IN (SELECT z FROM sh_b) AS y_in FROM sh_a a", [N, Y]),
    ("cte", "WITH t AS (SELECT x, y FROM sh_a) SELECT * FROM t", [N, Y]),
    ("cte_column_names", "WITH t(p, q) AS (SELECT x, y FROM sh_a) SELECT q, p FROM t", [Y, N]),
    ("recursive_cte",
     "WITH RECURSIVE r(i, label) AS (SELECT 1, 'x'::text UNION ALL "
     "SELECT i + 1, NULL FROM r WHERE i < 3) SELECT i, label FROM r", [N, Y]),
    ("data_modifying_cte",
     "WITH moved AS (UPDATE sh_b SET n = n WHERE id = :id RETURNING id, n) SELECT id, n FROM moved",
     [N, Y]),
    ("union", "SELECT x FROM sh_a UNION SELECT z FROM sh_b", [N]),
    ("union_with_nullable_arm", "SELECT x FROM sh_a UNION ALL SELECT y FROM sh_a", [Y]),
    ("intersect", "SELECT y FROM sh_a INTERSECT SELECT x FROM sh_a", [N]),
    ("except", "SELECT y FROM sh_a EXCEPT SELECT x FROM sh_a", [Y]),
    ("values", "SELECT * FROM (VALUES (1, 'a'), (2, NULL)) v(i, t)", [N, Y]),
    ("aggregates_without_group_by",
     "SELECT count(*), count(y), max(x), sum(id), array_agg(x), bool_or(true) FROM sh_a",
     [N, N, Y, Y, Y, Y]),
    ("aggregates_with_group_by",
     "SELECT a_id, count(*), max(z), sum(n), min(id) FILTER (WHERE n > 1) FROM sh_b GROUP BY a_id",
     [N, N, N, Y, Y]),
    ("grouping_sets", "SELECT a_id, count(*) FROM sh_b GROUP BY ROLLUP (a_id)", [Y, N]),
    ("having", "SELECT z, count(*) FROM sh_b GROUP BY z HAVING count(*) > 1", [N, N]),
    ("window_functions",
     "SELECT row_number() OVER w, rank() OVER w, sum(id) OVER w, lag(x) OVER w, "
     "lag(x, 1, '') OVER w, first_value(x) OVER w, "
     "sum(id) OVER (ORDER BY id ROWS BETWEEN 1 FOLLOWING AND 2 FOLLOWING) "
     "FROM sh_a WINDOW w AS (ORDER BY id)", [N, N, N, Y, N, N, Y]),
    ("expressions",
     "SELECT coalesce(y, 'none'), coalesce(y, y), id + 1, x || y, x::varchar, y IS NULL, "
     "CASE WHEN id > 1 THEN x ELSE 'q' END, CASE WHEN id > 1 THEN x END, "
     "nullif(x, ''), greatest(y, x), lower(x), lower(y), now(), 42, NULL::int, :p::int "
     "FROM sh_a", [N, Y, N, Y, N, N, N, Y, Y, N, N, Y, N, N, Y, Y]),
    ("set_returning_function", "SELECT g FROM generate_series(1, 3) g", [Y]),
    ("view", "SELECT id, x, z FROM sh_v", [N, N, Y]),
    ("view_security_invoker", "SELECT * FROM sh_vi", [N, N, Y, N]),
    ("view_on_nullable_side",
     "SELECT b.id, v.x FROM sh_b b LEFT JOIN sh_vi v ON v.id = b.a_id", [N, Y]),
    ("insert_returning",
     "INSERT INTO sh_a (id, x) VALUES (:id, :x) RETURNING *", [N, N, Y]),
    ("insert_select_returning",
     "INSERT INTO sh_c (id, b_id, w) SELECT id + 100000, id, z FROM sh_b "
     "ON CONFLICT DO NOTHING RETURNING id, w", [N, N]),
    ("update_from_returning",
     "UPDATE sh_b b SET n = 1 FROM sh_a a WHERE a.id = b.a_id AND b.id = :id "
     "RETURNING b.id, b.n, a.y, a.x", [N, Y, Y, N]),
    ("delete_returning", "DELETE FROM sh_c WHERE id = :id RETURNING *", [N, N, N]),
]
PLANS = {
    "default": {},
    "nested_loops": {"enable_hashjoin": "off", "enable_mergejoin": "off", "enable_seqscan": "off"},
    "merge_joins": {"enable_hashjoin": "off", "enable_nestloop": "off", "enable_indexscan": "off",
                    "enable_sort": "on"},
}
QUERIES = load_queries_from_str("\n".join(
    f"-- name: {name}(" + ", ".join(dict.fromkeys(
        p for p in ("lim", "id", "x", "p") if f":{p}" in sql)) + f")\n{sql};\n"
    for name, sql, _ in SHAPES))


def with_settings(dsn: str, settings: dict[str, str]) -> str:
    return dsn + ("&" if "?" in dsn else "?") + urlencode(settings) if settings else dsn


async def described(dsn: str) -> dict[str, list[bool]]:
    report = await check_queries(dsn, QUERIES)
    assert report.errors == []
    return {q.name: [c.nullable for c in q.columns] for q in report.queries}


@pytest.mark.parametrize("plan", sorted(PLANS))
@pytest.mark.parametrize("role", ["owner", "app"])
async def test_nullability_table(db_dsn: str, role: str, plan: str) -> None:
    con = await asyncpg.connect(db_dsn)
    try:
        await con.execute(SCHEMA)
        dsn = with_settings(db_dsn if role == "owner" else with_user(db_dsn, "pgaccess_app"),
                            PLANS[plan])
        empty = await described(dsn)
        await con.execute(LOAD)
        loaded = await described(dsn)
    finally:
        await con.close()
    expected = {name: cols for name, _, cols in SHAPES}
    wrong = {name: (empty[name], cols) for name, cols in expected.items() if empty[name] != cols}
    assert wrong == {}, "name: (got, expected)"
    assert loaded == empty


async def test_forced_plans_really_differ(db_dsn: str) -> None:
    """The forced settings change the plan of a join (else the test above proves nothing)."""
    con = await asyncpg.connect(db_dsn)
    try:
        await con.execute(SCHEMA + LOAD)
        plans = set()
        for settings in PLANS.values():
            async with con.transaction():
                for k, v in settings.items():
                    await con.execute(f"SET LOCAL {k} = {v}")
                plan = await con.fetchval(
                    "EXPLAIN (FORMAT JSON) SELECT a.x, b.z FROM sh_a a JOIN sh_b b ON b.a_id = a.id")
                plans.add(str(plan).split('"Node Type": "', 1)[1].split('"', 1)[0])
    finally:
        await con.close()
    assert len(plans) >= 2, plans
