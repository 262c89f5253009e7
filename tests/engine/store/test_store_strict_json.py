"""The store writes strict JSON only: a NaN or an infinity in a policy snapshot or a run's
config is refused with the key that holds it and the fix, nothing half-written; a cache
entry holding one stays in memory and out of the table, and the rest of its batch is
written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from engine import StoreError
from engine.store.cache import StoreCachePersistence
from engine.store.store import Store

FIX = (
    "which strict JSON cannot hold (readers of the store would get null or refuse the row); "
    "give a finite number, or leave the key out"
)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"router": {"threshold": math.nan}}, "'router.threshold' is nan"),
        ({"router": {"weights": [0.5, math.inf]}}, "'router.weights[1]' is inf"),
        ({"budget": -math.inf}, "'budget' is -inf"),
    ],
)
def test_a_policy_snapshot_holding_nan_or_infinity_is_refused_naming_the_key(
    tmp_path: Path, body: dict[str, object], says: str
) -> None:
    store = Store.open(tmp_path / "moat.db")
    with pytest.raises(StoreError) as caught:
        store.insert_policy_snapshot("triage", 1, "h", body, None)
    assert str(caught.value) == f"policy 'triage' version 1 cannot be stored: {says}, {FIX}"
    assert store.query("SELECT * FROM policy_snapshots") == []
    store.insert_policy_snapshot("triage", 1, "h", {"router": {"threshold": 0.4}}, None)
    (row,) = store.query("SELECT json_valid(body_json) AS ok FROM policy_snapshots")
    assert row["ok"] == 1


def test_a_run_config_holding_an_infinity_is_refused(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "moat.db")
    with pytest.raises(StoreError, match=r"^the run's config cannot be stored: 'max_rps' is inf, "):
        store.create_run("g", None, 1, config={"max_rps": math.inf})
    assert store.query("SELECT id FROM runs") == []


def test_a_cache_entry_holding_nan_is_kept_out_of_the_table_not_the_batch(
    tmp_path: Path,
) -> None:
    Store.open(tmp_path / "moat.db").close()
    cache = StoreCachePersistence(tmp_path / "moat.db", interval_s=0.0)
    cache.save("ns", "t", {"key": "a", "value": "old answer"})
    cache.flush()
    with capture_logs() as logs:
        cache.save("ns", "t", {"key": "a", "value": {"score": math.nan}})
        cache.save("ns", "t", {"key": "b", "value": "fine"})
        cache.flush()
    cache.close()
    reopened = StoreCachePersistence(tmp_path / "moat.db", interval_s=0.0)
    assert reopened.load("ns") == [("t", {"key": "b", "value": "fine"})]  # no stale 'a'
    reopened.close()
    (log,) = [entry for entry in logs if entry["event"] == "cache.entry_not_stored"]
    assert log["error"] == f"cache entry 'a' of 'ns' cannot be stored: 'value.score' is nan, {FIX}"
