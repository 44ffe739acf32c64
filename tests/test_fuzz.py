"""Property tests for the parsers that see untrusted or hand-written text."""

from __future__ import annotations

import contextlib
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from pgaccess import QueryLoadError, TenantError, parse_tenant_id
from pgaccess.migrate.split import SplitError, split_statements
from pgaccess.queries import load_queries_from_str

SQLISH = st.text(alphabet=list("ab ;'\"$-/*\nE()\\:x1_"), max_size=120)


@settings(max_examples=500, deadline=None)
@given(SQLISH)
def test_splitter_only_raises_split_error_and_keeps_text(script: str) -> None:
    try:
        statements = split_statements(script)
    except SplitError:
        return
    end = 0
    for st_ in statements:
        assert st_.start >= end
        assert script[st_.start:st_.start + len(st_.text)] == st_.text
        assert st_.text.strip()
        end = st_.start + len(st_.text)


PIECE = st.one_of(
    st.just("SELECT 1"),
    st.builds(lambda s: f"SELECT '{s}'", st.text(alphabet=list("ab;$\"-"), max_size=8).map(lambda s: s.replace("'", "''"))),
    st.builds(lambda s: f"SELECT $q${s}$q$", st.text(alphabet=list("ab;'\"-"), max_size=8)),
    st.builds(lambda s: f'SELECT 1 AS "{s}"', st.text(alphabet=list("ab;'$-"), min_size=1, max_size=8)),
    st.just("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$"),
    st.just("SELECT E'it\\'s; fine'"),
)


@settings(deadline=None)
@given(st.lists(PIECE, min_size=1, max_size=8), st.sampled_from([";\n", "; ", ";\n-- c;\n", ";/* ; */"]))
def test_split_then_join_keeps_every_statement(pieces: list[str], sep: str) -> None:
    script = sep.join(pieces) + ";"
    got = [s.text.strip() for s in split_statements(script)]
    cleaned = [g.split("*/", 1)[-1].split("\n", 1)[-1].strip() if g.startswith(("/*", "--")) else g for g in got]
    assert cleaned == pieces


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_query_loader_only_raises_its_typed_error(text: str) -> None:
    with contextlib.suppress(QueryLoadError):
        load_queries_from_str("-- name: q()\n" + text)


@settings(deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
                 st.integers(), st.none(), st.floats()))
def test_tenant_ids_are_uuids_or_a_typed_error(value: object) -> None:
    with contextlib.suppress(TenantError):
        assert isinstance(parse_tenant_id(value), uuid.UUID)
