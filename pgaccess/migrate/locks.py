"""The table locks a statement takes, read from its parse tree (for ``up --dry-run``).

Levels follow PostgreSQL's documentation ("Explicit Locking") and ``AlterTableGetLockLevel``;
for an ALTER TABLE with several subcommands the strongest one is reported.
"""

from __future__ import annotations

from pglast import ast
from pglast.enums import AlterTableType, ConstrType, ObjectType

ACCESS_SHARE, ROW_EXCLUSIVE = "ACCESS SHARE", "ROW EXCLUSIVE"
SHARE_UPDATE_EXCLUSIVE, SHARE = "SHARE UPDATE EXCLUSIVE", "SHARE"
SHARE_ROW_EXCLUSIVE, EXCLUSIVE, ACCESS_EXCLUSIVE = "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"
_ORDER = [ACCESS_SHARE, "ROW SHARE", ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE,
          SHARE_ROW_EXCLUSIVE, EXCLUSIVE, ACCESS_EXCLUSIVE]

_SUE_CMDS = {AlterTableType.AT_SetStatistics, AlterTableType.AT_ClusterOn,
             AlterTableType.AT_DropCluster, AlterTableType.AT_ValidateConstraint,
             AlterTableType.AT_AttachPartition, AlterTableType.AT_DetachPartitionFinalize}
_SRE_CMDS = {AlterTableType.AT_EnableTrig, AlterTableType.AT_EnableAlwaysTrig,
             AlterTableType.AT_EnableReplicaTrig, AlterTableType.AT_EnableTrigAll,
             AlterTableType.AT_EnableTrigUser, AlterTableType.AT_DisableTrig,
             AlterTableType.AT_DisableTrigAll, AlterTableType.AT_DisableTrigUser}


def name(rv: ast.RangeVar | None) -> str:
    if rv is None:
        return "?"
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname else str(rv.relname)


def strongest(modes: list[str]) -> str:
    return max(modes, key=_ORDER.index)


def locks(node: ast.Node) -> list[str]:
    """``["SHARE on orders", ...]``; ``[]`` when no user table is locked."""
    if isinstance(node, ast.IndexStmt):
        return [f"{SHARE_UPDATE_EXCLUSIVE if node.concurrent else SHARE} on {name(node.relation)}"]
    if isinstance(node, ast.AlterTableStmt):
        return _alter_table(node)
    if isinstance(node, ast.CreateStmt):
        refs = sorted({name(c.pktable) for c in _constraints(node) if c.pktable is not None})
        return [f"{ACCESS_EXCLUSIVE} on {name(node.relation)} (new)"] + [
            f"{SHARE_ROW_EXCLUSIVE} on {r} (referenced)" for r in refs]
    if isinstance(node, (ast.CreatePolicyStmt, ast.AlterPolicyStmt)):
        return [f"{ACCESS_EXCLUSIVE} on {name(node.table)}"]
    if isinstance(node, ast.CreateTrigStmt):
        return [f"{SHARE_ROW_EXCLUSIVE} on {name(node.relation)}"]
    if isinstance(node, ast.RenameStmt) and node.relation is not None:
        return [f"{ACCESS_EXCLUSIVE} on {name(node.relation)}"]
    if isinstance(node, ast.DropStmt):
        return _drop(node)
    if isinstance(node, ast.VacuumStmt):
        full = any(o.defname == "full" for o in node.options or ())
        mode = ACCESS_EXCLUSIVE if full else SHARE_UPDATE_EXCLUSIVE
        return [f"{mode} on {name(r.relation)}" for r in node.rels or ()] or [f"{mode} on every table"]
    if isinstance(node, ast.ClusterStmt):
        return [f"{ACCESS_EXCLUSIVE} on {name(node.relation)}"]
    if isinstance(node, ast.ReindexStmt) and node.relation is not None:
        concurrent = any(p.defname == "concurrently" for p in node.params or ())
        return [f"{SHARE_UPDATE_EXCLUSIVE if concurrent else SHARE} on {name(node.relation)}"]
    if isinstance(node, ast.TruncateStmt):
        return [f"{ACCESS_EXCLUSIVE} on {name(r)}" for r in node.relations or ()]
    if isinstance(node, ast.LockStmt):
        return [f"{_LOCK_MODES.get(node.mode or 0, '?')} on {name(r)}" for r in node.relations or ()]
    if isinstance(node, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
        return [f"{ROW_EXCLUSIVE} on {name(node.relation)}"]
    if isinstance(node, ast.RefreshMatViewStmt):
        return [f"{EXCLUSIVE if node.concurrent else ACCESS_EXCLUSIVE} on {name(node.relation)}"]
    return []


_LOCK_MODES = {1: ACCESS_SHARE, 2: "ROW SHARE", 3: ROW_EXCLUSIVE, 4: SHARE_UPDATE_EXCLUSIVE,
               5: SHARE, 6: SHARE_ROW_EXCLUSIVE, 7: EXCLUSIVE, 8: ACCESS_EXCLUSIVE}


def _alter_table(node: ast.AlterTableStmt) -> list[str]:
    modes: list[str] = []
    refs: set[str] = set()
    for cmd in node.cmds or ():
        c = cmd.def_ if isinstance(cmd.def_, ast.Constraint) else None
        if c is not None and c.contype == ConstrType.CONSTR_FOREIGN:
            modes.append(SHARE_ROW_EXCLUSIVE)
            refs.add(name(c.pktable))
        elif cmd.subtype in _SUE_CMDS:
            modes.append(SHARE_UPDATE_EXCLUSIVE)
        elif cmd.subtype in _SRE_CMDS:
            modes.append(SHARE_ROW_EXCLUSIVE)
        else:
            modes.append(ACCESS_EXCLUSIVE)
    if not modes:
        return []
    what = "index" if node.objtype == ObjectType.OBJECT_INDEX else ""
    out = [f"{strongest(modes)} on {what + ' ' if what else ''}{name(node.relation)}"]
    return out + [f"{SHARE_ROW_EXCLUSIVE} on {r} (referenced)" for r in sorted(refs)]


def _drop(node: ast.DropStmt) -> list[str]:
    if node.removeType not in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_INDEX,
                               ObjectType.OBJECT_VIEW, ObjectType.OBJECT_MATVIEW):
        return []
    mode = SHARE_UPDATE_EXCLUSIVE if node.concurrent else ACCESS_EXCLUSIVE
    names = [".".join(str(p.sval) for p in obj) for obj in node.objects or ()]
    suffix = " (and its table)" if node.removeType == ObjectType.OBJECT_INDEX else ""
    return [f"{mode} on {n}{suffix}" for n in names]


def _constraints(node: ast.CreateStmt) -> list[ast.Constraint]:
    out: list[ast.Constraint] = []
    for elt in node.tableElts or ():
        if isinstance(elt, ast.Constraint):
            out.append(elt)
        elif isinstance(elt, ast.ColumnDef):
            out += [c for c in elt.constraints or () if isinstance(c, ast.Constraint)]
    return out
