"""Citus: detection, node status, distributed tables and router-plan checks.

Everything here runs through the coordinator on an ordinary connection, as the app or
admin role (no superuser needed); on plain PostgreSQL :func:`is_citus` is False and the
rest is not called. What the unit of work must send on Citus is :data:`TENANT_PROPAGATION`
(see docs/SCALE.md): without it the tenant setting stays on the coordinator, the workers see
no tenant, and every tenant read returns nothing and every write is refused (fail closed).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

# Makes Citus forward SET LOCAL (never set_config()) of any setting to the worker
# connections of the transaction. Works sent with BEGIN, as a startup parameter or with
# ALTER ROLE/DATABASE ... SET (each proven by tests/test_citus.py).
TENANT_PROPAGATION = ("citus.propagate_set_commands", "local")

# Placements come from the catalogue (citus_shards would ask every worker for sizes, which
# only a superuser gets, and made the connection checks in the same query report false).
_NODES = """
SELECT n.nodeid, n.groupid, n.nodename, n.nodeport, n.noderole::text AS role, n.isactive,
       n.shouldhaveshards, citus_check_connection_to_node(n.nodename, n.nodeport) AS reachable,
       (SELECT count(*) FROM pg_dist_placement p WHERE p.groupid = n.groupid) AS shards
FROM pg_dist_node n
ORDER BY n.groupid, n.nodeid
"""


@dataclass(frozen=True)
class NodeStatus:
    """One node of the cluster as the coordinator sees it (group 0 is the coordinator)."""

    node_id: int
    group_id: int
    name: str
    port: int
    role: str
    active: bool
    has_shards: bool
    reachable: bool
    shards: int

    @property
    def healthy(self) -> bool:
        return self.active and self.reachable

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def is_citus(con: asyncpg.Connection) -> bool:
    """True when the Citus extension is installed in the connected database."""
    return bool(await con.fetchval("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')"))


async def node_status(con: asyncpg.Connection) -> list[NodeStatus]:
    """Every node in ``pg_dist_node``: reachable from the coordinator, shard placements.

    Checks each node with one connection attempt from the coordinator, so it costs a round
    trip per node; cache it like the other expensive health checks.
    """
    return [
        NodeStatus(
            node_id=r["nodeid"], group_id=r["groupid"], name=r["nodename"], port=r["nodeport"],
            role=r["role"], active=r["isactive"], has_shards=r["shouldhaveshards"],
            reachable=r["reachable"], shards=int(r["shards"]),
        )
        for r in await con.fetch(_NODES)
    ]


async def distributed_tables(con: asyncpg.Connection) -> dict[str, str | None]:
    """Citus tables by name: the distribution column, or None for reference tables."""
    rows = await con.fetch(
        "SELECT logicalrelid::regclass::text AS name, "
        "CASE WHEN partmethod = 'h' THEN column_to_column_name(logicalrelid, partkey) END AS col "
        "FROM pg_dist_partition WHERE partmethod IN ('h', 'n') ORDER BY 1"
    )
    return {r["name"]: r["col"] for r in rows}


def task_count(plan: Any) -> int | None:
    """Shard tasks in an ``EXPLAIN (FORMAT JSON)`` result of a distributed query (1 = router).

    None when the plan has no Citus node (a local or coordinator-only query).
    """
    if isinstance(plan, str):
        plan = json.loads(plan)
    total: int | None = None
    stack: list[Any] = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if "Task Count" in node:
                total = (total or 0) + int(node["Task Count"])
            stack.extend(v for k, v in node.items() if isinstance(v, (dict, list)))
    return total
