"""Shared helpers for pgaccess's own tests. The fixtures come from pgaccess.testing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgaccess.cluster import LocalCluster, temporary_cluster


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A private cluster this test may stop, restart or break."""
    cluster = temporary_cluster(prefix="pgaccess-own-")
    try:
        yield cluster
    finally:
        cluster.destroy()
