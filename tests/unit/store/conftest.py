"""The ``lake`` fixture of the Lakehouse tests (test_store.py, test_store_scans.py)."""

from __future__ import annotations

import pytest

from faas.store import Lakehouse
from tests.conftest import OpenLake


@pytest.fixture
def lake(open_lake: OpenLake) -> Lakehouse:
    return open_lake("sales")
