"""A fixed store for the TUI tests: two runs, 23 requests with every kind of row, two policies.

`build_store` creates the store through `Store.open` (so the schema is the real one) and
inserts rows with plain sqlite3 at fixed timestamps, so screens and snapshots are stable.
The graph the runs name in `config_json` uses three tiny node types registered through
`registry()`, injected into the app.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from engine import Node, NodeContext
from engine.plugin.registry import Registry
from engine.store.store import Store

T0 = 1714564800.0
"""2024-05-01 12:00:00 UTC."""
RUN_A = "r-20240501-120000-a1b2"
RUN_B = "r-20240501-130000-c3d4"
TENANTS = ("acme", "globex", "initech")

GRAPH = """\
moat: 1
name: triage
models:
  small: {provider: sim, profile: small}
policy: triage-policy.yaml
nodes:
  route:
    type: classify
  cached:
    type: lookup
  draft:
    type: draft
    speculative: true
  refine:
    type: loop
    max_cycles: 3
    until: critic.score > 0.5
    nodes:
      critic:
        type: score
      revise:
        type: draft
        when: critic.score < 0.5
    output:
      score: critic.score
output:
  answer: cached.text if cached.hit else draft.text
  route: route.text
  score: refine.score
"""

POLICY_V1 = """\
name: triage
router:
  threshold: 0.5
critic:
  revise_below: 0.5
"""

POLICY_V3 = """\
name: triage
router:
  threshold: 0.35
critic:
  revise_below: 0.6
"""


class _Empty(BaseModel):
    pass


class _Text(BaseModel):
    text: str = ""
    hit: bool = False


class _Score(BaseModel):
    score: float = 0.0


class Classify(Node):
    """Test router."""

    type_name = "classify"
    Config = _Empty
    Output = _Text

    async def run(self, config: Any, ctx: NodeContext) -> BaseModel:
        return _Text(text="small")


class Lookup(Classify):
    """Test cache."""

    type_name = "lookup"


class Draft(Classify):
    """Test model."""

    type_name = "draft"


class Score(Node):
    """Test critic."""

    type_name = "score"
    Config = _Empty
    Output = _Score

    async def run(self, config: Any, ctx: NodeContext) -> BaseModel:
        return _Score(score=0.9)


def registry() -> Registry:
    """The node types of the fixture graph."""
    return Registry([Classify, Lookup, Draft, Score])


def _status(i: int) -> str:
    return {4: "failed", 11: "partial", 15: "failed", 18: "deadline_exceeded"}.get(i, "ok")


class _Writer:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.seq = 0

    def event(self, run: str, rid: str, at: float, kind: str, **fields: Any) -> None:
        self.seq += 1
        self.conn.execute(
            "INSERT INTO orchestration_events (run_id, request_id, cycle, stage, component, "
            "event_type, decision, status, sequence, started_at, duration_ms, "
            "reason_codes_json, inputs_json, outputs_json, payload_json) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run,
                rid,
                fields.get("cycle", 0),
                fields.get("stage", "request"),
                fields.get("component", "scheduler"),
                kind,
                fields.get("decision"),
                fields.get("status", "ok"),
                self.seq,
                at,
                fields.get("duration_ms"),
                json.dumps(fields.get("reasons", [])),
                None,
                None,
                json.dumps(fields["payload"]) if "payload" in fields else None,
            ),
        )

    def node(self, rid: str, node: str, kind: str, at: float, dur: float, **f: Any) -> None:
        self.conn.execute(
            "INSERT INTO node_runs (request_id, node, node_type, cycle, status, speculative, "
            "outcome, started_at, duration_ms, attempts, error) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                rid,
                node,
                kind,
                f.get("cycle", 0),
                f.get("status", "succeeded"),
                int(f.get("speculative", False)),
                f.get("outcome", "used"),
                at,
                dur,
                1,
                f.get("error"),
            ),
        )

    def call(self, rid: str, node: str, at: float, latency: float, **f: Any) -> None:
        self.conn.execute(
            "INSERT INTO llm_calls (request_id, node, cycle, model, provider, call_kind, "
            "call_outcome, cache_status, prompt_hash, input_tokens, output_tokens, cost_usd, "
            "latency_ms, started_at, status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                rid,
                node,
                f.get("cycle", 0),
                f.get("model", "small"),
                "sim",
                f.get("kind", "normal"),
                f.get("outcome", "used"),
                f.get("cache", "miss"),
                f"h{len(rid)}{node}",
                120,
                f.get("tokens", 40),
                f.get("cost", 0.0004),
                latency,
                at,
                "ok",
            ),
        )


def _request(w: _Writer, run: str, i: int, start: float) -> None:
    rid = f"q-{run[-4:]}-{i:03d}"
    status = _status(i)
    route = "large" if i % 3 == 0 else "small"
    hit = i % 5 == 2
    cycles = 0 if hit else 1 + i % 3
    latency = 120.0 if hit else 300.0 + (i * 37 % 11) * 60 + cycles * 90
    cost = 0.0 if hit else round(0.0006 + (0.002 if route == "large" else 0.0) * cycles, 6)
    at = start
    w.event(run, rid, at, "POLICY_PINNED", decision="triage@2")
    w.node(rid, "route", "classify", at, 8)
    w.event(
        run,
        rid,
        at + 0.008,
        "ROUTE_SELECTED",
        stage="route",
        component="classify",
        decision=route,
        reasons=["length_over_threshold" if route == "large" else "short"],
    )
    w.node(rid, "cached", "lookup", at + 0.008, 12)
    w.event(
        run,
        rid,
        at + 0.02,
        "CACHE_HIT" if hit else "CACHE_MISS",
        stage="cached",
        component="lookup",
        decision="hit" if hit else "miss",
    )
    w.event(run, rid, at + 0.008, "SPECULATIVE_STARTED", stage="draft", decision="speculative")
    draft_outcome = "discarded" if hit else "used"
    w.node(rid, "draft", "draft", at + 0.008, 90, speculative=True, outcome=draft_outcome)
    w.call(rid, "draft", at + 0.01, 85, kind="speculative", outcome=draft_outcome)
    kind = "SPECULATIVE_RESULT_DISCARDED" if hit else "SPECULATIVE_RESULT_USED"
    w.event(run, rid, at + 0.1, kind, stage="draft")
    if hit:
        w.conn.execute(
            "UPDATE llm_calls SET cache_status = 'hit' WHERE request_id = ? AND node = 'draft'",
            (rid,),
        )
    t = at + 0.1
    for cycle in range(1, cycles + 1):
        w.event(run, rid, t, "LOOP_CYCLE_STARTED", stage="refine", cycle=cycle)
        score = 0.3 if cycle < cycles else 0.8
        w.node(rid, "critic", "score", t, 70, cycle=cycle)
        w.call(rid, "critic", t, 65, cycle=cycle, model=route, cost=cost / max(cycles, 1))
        action = "revise" if score < 0.5 else "proceed"
        w.event(
            run,
            rid,
            t + 0.07,
            "CRITIC_DECISION",
            stage="critic",
            component="score",
            cycle=cycle,
            decision=action,
            reasons=[f"score_{score}"],
        )
        run_revise = score < 0.5
        w.event(
            run,
            rid,
            t + 0.07,
            "GATE_DECISION",
            stage="revise",
            cycle=cycle,
            decision="run" if run_revise else "skip",
        )
        if run_revise:
            w.node(rid, "revise", "draft", t + 0.07, 20, cycle=cycle)
        else:
            w.node(
                rid, "revise", "draft", t + 0.07, 0, cycle=cycle, status="skipped", outcome="none"
            )
        w.conn.execute(
            "INSERT INTO decision_traces (request_id, cycle, stage, payload_json) "
            "VALUES (?, ?, 'CYCLE_SUMMARY', ?)",
            (
                rid,
                cycle,
                json.dumps(
                    {
                        "planned": ["critic", "revise"],
                        "executed": ["critic", "revise"] if run_revise else ["critic"],
                        "skipped": [] if run_revise else ["revise"],
                        "cancelled": [],
                        "critic": action,
                        "convergence_decision": "continue" if run_revise else "converged",
                        "convergence_reason": f"score {score}",
                        "next_action": "revise" if run_revise else "finish",
                    }
                ),
            ),
        )
        t += 0.09
    if cycles:
        w.event(run, rid, t, "LOOP_UNTIL_MET", stage="refine", cycle=cycles)
    if status == "failed":
        w.event(
            run,
            rid,
            t,
            "NODE_FAILED",
            stage="critic",
            component="score",
            status="failed",
            reasons=["schema_mismatch"],
        )
        w.event(run, rid, t, "VALIDATION_FAILED", stage="request", decision="invalid")
    elif not hit:
        w.event(run, rid, t, "VALIDATION_PASSED", stage="request", decision="valid")
    w.conn.execute(
        "INSERT INTO requests (id, run_id, seq, tenant, status, started_at, finished_at, "
        "latency_ms, cost_usd, policy_name, policy_version, input_hash, output_json, error) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'triage', ?, ?, ?, ?)",
        (
            rid,
            run,
            i,
            TENANTS[i % 3],
            status,
            start,
            start + latency / 1000,
            latency,
            cost,
            1 if i < 3 else 2,
            f"in{i}",
            json.dumps({"answer": f"answer {i}"}),
            "critic: output did not match the schema" if status == "failed" else None,
        ),
    )


def _policies(conn: sqlite3.Connection) -> None:
    bodies = {
        1: {"name": "triage", "router": {"threshold": 0.5}, "critic": {"revise_below": 0.5}},
        2: {"name": "triage", "router": {"threshold": 0.4}, "critic": {"revise_below": 0.5}},
    }
    for version, body in bodies.items():
        conn.execute(
            "INSERT INTO policy_snapshots VALUES ('triage', ?, ?, ?, ?, ?, ?)",
            (
                version,
                f"hash{version}",
                json.dumps(body, sort_keys=True),
                T0 - 86400 / version,
                version - 1 or None,
                "active" if version == 2 else "inactive",
            ),
        )
        conn.execute(
            "INSERT INTO policy_activations (name, version, activated_at, reason) "
            "VALUES ('triage', ?, ?, ?)",
            (version, T0 - 86400 / version, f"applied triage.yaml v{version}"),
        )


def build_store(tmp_path: Path) -> Path:
    """Create the fixed store (and its graph file) under `tmp_path`; return the db path."""
    graph = tmp_path / "triage.yaml"
    graph.write_text(GRAPH)
    (tmp_path / "triage-policy.yaml").write_text(POLICY_V1)
    (tmp_path / "policy_v3.yaml").write_text(POLICY_V3)
    db = tmp_path / "moat.db"
    Store.open(db).close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    config = json.dumps({"graph_path": str(graph), "concurrency": 4})
    conn.execute(
        "INSERT INTO runs VALUES (?, 'triage', 'abc123', ?, ?, 'finished', 20, 20, ?)",
        (RUN_A, T0, T0 + 12.5, config),
    )
    conn.execute(
        "INSERT INTO runs VALUES (?, 'triage', 'abc123', ?, NULL, 'running', 10, 3, ?)",
        (RUN_B, T0 + 3600, config),
    )
    w = _Writer(conn)
    for i in range(20):
        _request(w, RUN_A, i, T0 + i * 0.6)
    for i in range(3):
        _request(w, RUN_B, i, T0 + 3600 + i * 0.6)
    _policies(conn)
    conn.execute("COMMIT")
    conn.close()
    return db


def add_request(db: Path, i: int) -> str:
    """Append one more finished request to run B (as a live writer would); return its id."""
    conn = sqlite3.connect(db, isolation_level=None)
    w = _Writer(conn)
    w.seq = 10_000 + i * 100
    _request(w, RUN_B, i, T0 + 3600 + i * 0.6)
    conn.close()
    return f"q-{RUN_B[-4:]}-{i:03d}"


def test_fixture_store_loads(tmp_path: Path) -> None:
    db = build_store(tmp_path)
    with Store.open(db, readonly=True) as store:
        assert len(store.list_requests(RUN_A)) == 20
        assert store.list_policies()[0]["active"] == 2
