"""The compact layout of the per-request tables (schema version 3), and the writer's side
of it.

A flagship request writes ~60 rows (events, node runs, LLM calls, traces). In the
contract's layout each row repeated the 29-byte request id, the run id, and its node,
type and component names as text, and a TEXT request-id index repeated the id once more:
most of a request's ~12 KB was that repetition, not information. Here every such row is
keyed by a small integer request key (`request_keys`: key -> request id, run, start
time), every low-cardinality text (names, types, statuses, reason-code lists, and
payloads that repeat exactly, such as static `when:` expressions) is a code into one
`strings` table, and times are integer microseconds from the request's first record.

The contract's tables (`orchestration_events`, `node_runs`, `llm_calls`,
`decision_traces`) are views with the contract's exact columns over the compact tables,
so every reader (`moat report`, the TUI, `moat sync`, SQL in tests and scripts) reads the
same rows as before; `INSTEAD OF` triggers make them insertable and deletable, so policy
events, merges and tools writing the contract's columns keep working. The batching writer
bypasses the triggers and writes compact rows directly (`Compactor`).

Columns holding "a code or the text itself" (decision, reason codes, payloads) are
untyped: an INTEGER is a `strings` code, anything else the value. Short payload texts
are interned the third time the writer sees them, so one-off payloads stay inline and a
static one (a `when:` expression, a reuse note) is stored once; long ones are compressed
by the codec instead. `strings` rows are never deleted: prunes keep them (they are
shared by every run), as they keep zstd dictionaries.

`FACT_EVENT_TYPES` get the fixed codes 1-9, so one partial index (`type < 10`) finds the
events run figures count without a join.
"""

from __future__ import annotations

import sqlite3
from typing import Any

__all__ = [
    "COMPACT_TABLES",
    "FACTS_WHERE",
    "FACT_CODES",
    "FACT_EVENT_TYPES",
    "FAILED_IN",
    "MIGRATION_3",
    "RUN_KEYS",
    "Compactor",
    "code_of",
    "delete_keys",
    "either",
    "keys_of",
    "name_of",
    "offset_us",
]

FACT_EVENT_TYPES = (
    "CACHE_HIT",
    "CACHE_MISS",
    "VALIDATION_PASSED",
    "VALIDATION_FAILED",
    "SPECULATIVE_RESULT_USED",
    "SPECULATIVE_RESULT_DISCARDED",
    "BRANCH_CANCELLED",
    "NODE_FAILED",
    "ROUTE_SELECTED",
)
FACT_CODES = {name: code for code, name in enumerate(FACT_EVENT_TYPES, start=1)}
FACTS_WHERE = "type < 10"
"""`event_rows_facts`'s condition: queries repeat it verbatim, or SQLite will not use it."""


def name_of(column: str) -> str:
    """SQL for the text of a `strings` code column."""
    return f"(SELECT text FROM strings WHERE code = {column})"


def code_of(text: str) -> str:
    """SQL for the `strings` code of the literal `text` (NULL if never stored)."""
    return f"(SELECT code FROM strings WHERE text = '{text}')"


def either(column: str) -> str:
    """SQL for a column holding a `strings` code or the value itself."""
    return f"CASE WHEN typeof({column}) = 'integer' THEN {name_of(column)} ELSE {column} END"


def _code(value: str) -> str:
    return f"(SELECT code FROM strings WHERE text = {value})"


def _code_or_value(value: str) -> str:
    """The trigger side of `_either`: the code if the text is interned, else the value."""
    return f"COALESCE({_code(value)}, {value})"


_KEY_OF = "(SELECT key FROM request_keys WHERE id = NEW.request_id ORDER BY key LIMIT 1)"
"""A request's key for rows that do not name a run (the first one made)."""


def _new_key_by_id() -> str:
    return (
        "INSERT INTO request_keys (id, run, t0) SELECT NEW.request_id, "
        f"{_code(repr(''))}, round(NEW.started_at, 6) WHERE NOT EXISTS "
        "(SELECT 1 FROM request_keys WHERE id = NEW.request_id)"
    )


_INTERN = "INSERT OR IGNORE INTO strings (text) VALUES "

_TABLES = (
    "CREATE TABLE strings (code INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE)",
    "INSERT INTO strings (code, text) VALUES "
    + ", ".join(f"({code}, '{name}')" for name, code in FACT_CODES.items()),
    "INSERT INTO strings (code, text) VALUES (10, '')",
    """CREATE TABLE request_keys (
        key INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        run INTEGER NOT NULL,
        t0 REAL NOT NULL
    )""",
    "CREATE UNIQUE INDEX request_keys_id ON request_keys (id, run)",
    "CREATE INDEX request_keys_run ON request_keys (run)",
    """CREATE TABLE event_rows (
        id INTEGER PRIMARY KEY,
        rk INTEGER NOT NULL,
        run INTEGER NOT NULL,
        cycle INTEGER NOT NULL,
        stage INTEGER NOT NULL,
        component INTEGER NOT NULL,
        type INTEGER NOT NULL,
        decision,
        status INTEGER,
        sequence INTEGER NOT NULL,
        at INTEGER NOT NULL,
        duration_ms REAL,
        reasons,
        inputs,
        outputs,
        payload
    )""",
    "CREATE INDEX event_rows_rk ON event_rows (rk)",
    f"CREATE INDEX event_rows_facts ON event_rows (run, type) WHERE {FACTS_WHERE}",
    """CREATE TABLE node_rows (
        id INTEGER PRIMARY KEY,
        rk INTEGER NOT NULL,
        node INTEGER NOT NULL,
        node_type INTEGER NOT NULL,
        cycle INTEGER NOT NULL,
        status INTEGER NOT NULL,
        speculative INTEGER NOT NULL,
        outcome INTEGER NOT NULL,
        at INTEGER NOT NULL,
        duration_us INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT
    )""",
    "CREATE INDEX node_rows_rk ON node_rows (rk)",
    "CREATE INDEX node_rows_speculative ON node_rows (rk, status, outcome) WHERE speculative = 1",
    """CREATE TABLE llm_rows (
        id INTEGER PRIMARY KEY,
        rk INTEGER NOT NULL,
        node INTEGER NOT NULL,
        cycle INTEGER NOT NULL,
        model INTEGER NOT NULL,
        provider INTEGER NOT NULL,
        call_kind INTEGER NOT NULL,
        call_outcome INTEGER NOT NULL,
        cache_status INTEGER NOT NULL,
        related_event_id INTEGER,
        prompt_hash TEXT,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        latency_ms REAL NOT NULL,
        at INTEGER NOT NULL,
        status INTEGER NOT NULL,
        error TEXT,
        prompt_text TEXT,
        response_text TEXT
    )""",
    "CREATE INDEX llm_rows_rk ON llm_rows (rk)",
    """CREATE TABLE trace_rows (
        id INTEGER PRIMARY KEY,
        rk INTEGER NOT NULL,
        cycle INTEGER NOT NULL,
        stage INTEGER NOT NULL,
        payload NOT NULL
    )""",
    "CREATE INDEX trace_rows_rk ON trace_rows (rk)",
    """CREATE TABLE run_totals (
        run_id TEXT PRIMARY KEY,
        requests INTEGER NOT NULL,
        cost REAL NOT NULL,
        latency_sum REAL NOT NULL,
        latency_max REAL,
        errors INTEGER NOT NULL,
        facts TEXT NOT NULL
    )""",
)

FAILED_IN = "status IN ('deadline_exceeded', 'failed', 'invalid_input')"
"""A failed request's statuses (`engine.stats.FAILED_STATUSES`), as SQL; the partial index
`requests_failed` repeats it verbatim, or SQLite will not use it."""


_AT = "round(k.t0 + e.at / 1000000.0, 6)"
"""A stored time: the key's start plus the offset, to the microsecond (both are whole
microseconds, so a row copied through the view into another store reads the same)."""

_VIEWS = (
    "CREATE VIEW orchestration_events AS SELECT e.id AS id, "
    f"{name_of('e.run')} AS run_id, k.id AS request_id, e.cycle AS cycle, "
    f"{name_of('e.stage')} AS stage, {name_of('e.component')} AS component, "
    f"{name_of('e.type')} AS event_type, {either('e.decision')} AS decision, "
    f"{name_of('e.status')} AS status, e.sequence AS sequence, {_AT} AS started_at, "
    f"e.duration_ms AS duration_ms, {either('e.reasons')} AS reason_codes_json, "
    f"{either('e.inputs')} AS inputs_json, {either('e.outputs')} AS outputs_json, "
    f"{either('e.payload')} AS payload_json "
    "FROM event_rows e JOIN request_keys k ON k.key = e.rk",
    "CREATE VIEW node_runs AS SELECT e.id AS id, k.id AS request_id, "
    f"{name_of('e.node')} AS node, {name_of('e.node_type')} AS node_type, e.cycle AS cycle, "
    f"{name_of('e.status')} AS status, e.speculative AS speculative, "
    f"{name_of('e.outcome')} AS outcome, {_AT} AS started_at, "
    "e.duration_us / 1000.0 AS duration_ms, e.attempts AS attempts, e.error AS error "
    "FROM node_rows e JOIN request_keys k ON k.key = e.rk",
    "CREATE VIEW llm_calls AS SELECT e.id AS id, k.id AS request_id, "
    f"{name_of('e.node')} AS node, e.cycle AS cycle, {name_of('e.model')} AS model, "
    f"{name_of('e.provider')} AS provider, {name_of('e.call_kind')} AS call_kind, "
    f"{name_of('e.call_outcome')} AS call_outcome, "
    f"{name_of('e.cache_status')} AS cache_status, e.related_event_id AS related_event_id, "
    "e.prompt_hash AS prompt_hash, e.input_tokens AS input_tokens, "
    "e.output_tokens AS output_tokens, e.cost_usd AS cost_usd, e.latency_ms AS latency_ms, "
    f"{_AT} AS started_at, {name_of('e.status')} AS status, e.error AS error, "
    "e.prompt_text AS prompt_text, e.response_text AS response_text "
    "FROM llm_rows e JOIN request_keys k ON k.key = e.rk",
    "CREATE VIEW decision_traces AS SELECT e.id AS id, k.id AS request_id, e.cycle AS cycle, "
    f"{name_of('e.stage')} AS stage, {either('e.payload')} AS payload_json "
    "FROM trace_rows e JOIN request_keys k ON k.key = e.rk",
)

_CONTRACT_COLUMNS = {
    "orchestration_events": "id, run_id, request_id, cycle, stage, component, event_type, "
    "decision, status, sequence, started_at, duration_ms, reason_codes_json, inputs_json, "
    "outputs_json, payload_json",
    "node_runs": "id, request_id, node, node_type, cycle, status, speculative, outcome, "
    "started_at, duration_ms, attempts, error",
    "llm_calls": "id, request_id, node, cycle, model, provider, call_kind, call_outcome, "
    "cache_status, related_event_id, prompt_hash, input_tokens, output_tokens, cost_usd, "
    "latency_ms, started_at, status, error, prompt_text, response_text",
    "decision_traces": "id, request_id, cycle, stage, payload_json",
}
COMPACT_TABLES = {
    "orchestration_events": "event_rows",
    "node_runs": "node_rows",
    "llm_calls": "llm_rows",
    "decision_traces": "trace_rows",
}
"""Each contract view and the table that holds its rows."""

_BASES = tuple(COMPACT_TABLES.items())

_OFFSET = "CAST(round((NEW.started_at - k.t0) * 1000000) AS INTEGER)"
_EVENT_RUN = _code("NEW.run_id")

_TRIGGERS = (
    "CREATE TRIGGER orchestration_events_insert INSTEAD OF INSERT ON orchestration_events "
    "BEGIN "
    f"{_INTERN} (NEW.run_id), (NEW.stage), (NEW.component), (NEW.event_type), "
    "(NEW.decision), (NEW.status), (NEW.reason_codes_json); "
    "INSERT INTO request_keys (id, run, t0) SELECT NEW.request_id, "
    f"{_EVENT_RUN}, round(NEW.started_at, 6) WHERE NOT EXISTS (SELECT 1 FROM request_keys "
    f"WHERE id = NEW.request_id AND run = {_EVENT_RUN}); "
    "INSERT INTO event_rows (id, rk, run, cycle, stage, component, type, decision, status, "
    "sequence, at, duration_ms, reasons, inputs, outputs, payload) SELECT NEW.id, k.key, "
    f"k.run, NEW.cycle, {_code('NEW.stage')}, {_code('NEW.component')}, "
    f"{_code('NEW.event_type')}, {_code('NEW.decision')}, {_code('NEW.status')}, "
    f"NEW.sequence, {_OFFSET}, NEW.duration_ms, {_code('NEW.reason_codes_json')}, "
    f"{_code_or_value('NEW.inputs_json')}, {_code_or_value('NEW.outputs_json')}, "
    f"{_code_or_value('NEW.payload_json')} FROM request_keys k "
    f"WHERE k.id = NEW.request_id AND k.run = {_EVENT_RUN}; "
    "END",
    "CREATE TRIGGER node_runs_insert INSTEAD OF INSERT ON node_runs BEGIN "
    f"{_INTERN} (NEW.node), (NEW.node_type), (NEW.status), (NEW.outcome); "
    f"{_new_key_by_id()}; "
    "INSERT INTO node_rows (id, rk, node, node_type, cycle, status, speculative, outcome, at, "
    "duration_us, attempts, error) SELECT NEW.id, k.key, "
    f"{_code('NEW.node')}, {_code('NEW.node_type')}, NEW.cycle, {_code('NEW.status')}, "
    f"NEW.speculative, {_code('NEW.outcome')}, {_OFFSET}, "
    "CAST(round(NEW.duration_ms * 1000) AS INTEGER), NEW.attempts, NEW.error "
    f"FROM request_keys k WHERE k.key = {_KEY_OF}; "
    "END",
    "CREATE TRIGGER llm_calls_insert INSTEAD OF INSERT ON llm_calls BEGIN "
    f"{_INTERN} (NEW.node), (NEW.model), (NEW.provider), (NEW.call_kind), "
    "(NEW.call_outcome), (NEW.cache_status), (NEW.status); "
    f"{_new_key_by_id()}; "
    "INSERT INTO llm_rows (id, rk, node, cycle, model, provider, call_kind, call_outcome, "
    "cache_status, related_event_id, prompt_hash, input_tokens, output_tokens, cost_usd, "
    "latency_ms, at, status, error, prompt_text, response_text) SELECT NEW.id, k.key, "
    f"{_code('NEW.node')}, NEW.cycle, {_code('NEW.model')}, {_code('NEW.provider')}, "
    f"{_code('NEW.call_kind')}, {_code('NEW.call_outcome')}, {_code('NEW.cache_status')}, "
    "NEW.related_event_id, NEW.prompt_hash, NEW.input_tokens, NEW.output_tokens, "
    f"NEW.cost_usd, NEW.latency_ms, {_OFFSET}, {_code('NEW.status')}, NEW.error, "
    f"NEW.prompt_text, NEW.response_text FROM request_keys k WHERE k.key = {_KEY_OF}; "
    "END",
    "CREATE TRIGGER decision_traces_insert INSTEAD OF INSERT ON decision_traces BEGIN "
    f"{_INTERN} (NEW.stage); "
    "INSERT INTO request_keys (id, run, t0) SELECT NEW.request_id, "
    f"{_code(repr(''))}, 0 WHERE NOT EXISTS "
    "(SELECT 1 FROM request_keys WHERE id = NEW.request_id); "
    "INSERT INTO trace_rows (id, rk, cycle, stage, payload) SELECT NEW.id, k.key, NEW.cycle, "
    f"{_code('NEW.stage')}, {_code_or_value('NEW.payload_json')} FROM request_keys k "
    f"WHERE k.key = {_KEY_OF}; "
    "END",
    *(
        f"CREATE TRIGGER {view}_delete INSTEAD OF DELETE ON {view} BEGIN "
        f"DELETE FROM {base} WHERE id = OLD.id; END"
        for view, base in _BASES
    ),
    # An update is the row written again under the same id (through the insert trigger).
    *(
        f"CREATE TRIGGER {view}_update INSTEAD OF UPDATE ON {view} BEGIN "
        f"DELETE FROM {base} WHERE id = OLD.id; "
        f"INSERT INTO {view} ({_CONTRACT_COLUMNS[view]}) VALUES "
        f"({', '.join('NEW.' + c.strip() for c in _CONTRACT_COLUMNS[view].split(','))}); END"
        for view, base in _BASES
    ),
)

MIGRATION_3: tuple[str, ...] = (
    *(f"ALTER TABLE {view} RENAME TO v2_{view}" for view in _CONTRACT_COLUMNS),
    *_TABLES,
    *_VIEWS,
    *_TRIGGERS,
    # Through the views' triggers, in id order (ids kept, so `moat sync` watermarks stay
    # valid): events first, so each request's key names its run.
    *(
        f"INSERT INTO {view} ({columns}) SELECT {columns} FROM v2_{view} ORDER BY id"
        for view, columns in _CONTRACT_COLUMNS.items()
    ),
    *(f"DROP TABLE v2_{view}" for view in _CONTRACT_COLUMNS),
    # Every finished run's totals, in one statement.
    "INSERT INTO run_totals WITH f AS (SELECT run, json_group_object(type, n) AS facts "
    f"FROM (SELECT run, type, COUNT(*) AS n FROM event_rows WHERE {FACTS_WHERE} "
    "GROUP BY run, type) GROUP BY run), t AS (SELECT run_id, COUNT(*) AS requests, "
    "SUM(cost_usd) AS cost, SUM(latency_ms) AS latency_sum, MAX(latency_ms) AS latency_max, "
    f"SUM({FAILED_IN}) AS errors FROM requests GROUP BY run_id) "
    "SELECT r.id, COALESCE(t.requests, 0), COALESCE(t.cost, 0), COALESCE(t.latency_sum, 0), "
    "t.latency_max, COALESCE(t.errors, 0), COALESCE((SELECT f.facts FROM f JOIN strings s "
    "ON s.code = f.run WHERE s.text = r.id), '{}') FROM runs r LEFT JOIN t ON t.run_id = r.id "
    "WHERE r.status != 'running'",
)
"""Schema 2 -> 3: the per-request tables become the compact layout, rows converted. The
file keeps its size until its free pages are handed back (`moat prune --vacuum`, or
incremental vacuum on a store made since schema 2)."""


_SEEN_MAX = 20_000
"""Texts counted towards interning before the count is cleared."""
_CACHE_MAX = 200_000
"""Codes and request keys kept in memory before those caches are cleared."""
_LABELS_MAX = 4_096
"""Label tuples (`Compactor.labels`) kept before that cache is cleared."""
_INTERN_MAX_CHARS = 64
"""Texts this long or longer are never interned (the codec compresses them)."""
_INTERN_AT = 3
"""A text is interned the third time it is seen: stored once in `strings` plus its
index entry, it must be referenced a few times to save anything."""
_SHARED_MAX = 512
"""Payload objects (`Compactor.payloads`) kept before that cache is cleared."""
_SHARED_MAX_CHARS = 512
"""Payloads whose JSON text is longer are not kept there (nor the object alive)."""


_NO_KEY: tuple[str | None, int, tuple[int, float]] = (None, 0, (0, 0.0))
"""`Compactor._last` when no request's key is known to be the last one asked for."""


def _merge(cache: dict[Any, Any], added: dict[Any, Any]) -> None:
    if len(cache) + len(added) > _CACHE_MAX:
        cache.clear()
    cache.update(added)
    added.clear()


class Compactor:
    """The writer's encoder: codes for texts and keys for requests, from in-memory caches
    backed by `strings` and `request_keys`.

    Used inside the writer's write transaction (`begin` ... `commit`/`rollback`): what a
    transaction adds is kept apart until it commits, so a rolled-back code or key is never
    reused.
    """

    def __init__(self) -> None:
        self._codes: dict[str, int] = {"": 10, **FACT_CODES}
        self._keys: dict[tuple[str, int], tuple[int, float]] = {}
        self._by_id: dict[str, tuple[int, float]] = {}
        self._seen: dict[str, int] = {}
        self._tx_codes: dict[str, int] = {}
        self._tx_keys: dict[tuple[str, int], tuple[int, float]] = {}
        self._tx_by_id: dict[str, tuple[int, float]] = {}
        self._conn: sqlite3.Connection | None = None
        self._last: tuple[str | None, int, tuple[int, float]] = _NO_KEY
        """The last `event_key` asked for and its answer (`(request id, run, key)`)."""
        self.labels: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        """The codes of label columns that repeat together in a kind of row (an event's
        stage, component, type, status and reasons), by their values: the row builders'
        (`engine.store.rows`) one lookup where each label took its own. Emptied when a
        transaction rolls back (a code it interned is gone) and when it grows past
        `_LABELS_MAX`."""
        self.payloads: dict[int, tuple[object, str | bytes | int]] = {}
        """Stored values of payload objects, by identity, holding the object (so its id
        is not reused while kept): the scheduler records one payload object on many
        events (a reuse note, a guard's `when:`), never changed once recorded, and
        encoding, counting and compressing it again for each one (23 of a flagship
        request's 39 payloads) cost 160,000 instructions a request, 5% of the writer's.
        Only final values are kept (`keep`). Emptied when a transaction rolls back,
        when the codes are cleared and at `_SHARED_MAX`."""

    def begin(self, conn: sqlite3.Connection) -> None:
        """Start encoding for one write transaction on `conn`."""
        self._conn = conn

    def commit(self) -> None:
        """The transaction committed: what it added becomes reusable."""
        if len(self._codes) + len(self._tx_codes) > _CACHE_MAX:
            self.payloads.clear()  # a kept code is one `maybe` finds in `_codes`
        _merge(self._codes, self._tx_codes)
        _merge(self._keys, self._tx_keys)
        _merge(self._by_id, self._tx_by_id)
        self._conn = None

    def rollback(self) -> None:
        """The transaction rolled back: forget what it added."""
        self._tx_codes.clear()
        self._tx_keys.clear()
        self._tx_by_id.clear()
        self._last = _NO_KEY
        self.labels.clear()
        self.payloads.clear()
        self._conn = None

    def code(self, text: str) -> int:
        """The `strings` code of `text`, interning it if new."""
        found = self._codes.get(text)
        if found is None:
            found = self._tx_codes.get(text)
            if found is None:
                found = self._intern(text)
        return found

    def _intern(self, text: str) -> int:
        conn = self._conn
        assert conn is not None, "Compactor.code outside a write transaction"
        conn.execute("INSERT OR IGNORE INTO strings (text) VALUES (?)", (text,))
        row = conn.execute("SELECT code FROM strings WHERE text = ?", (text,)).fetchone()
        code = int(row[0])
        self._tx_codes[text] = code
        if len(text) >= _INTERN_MAX_CHARS:
            self.payloads.clear()  # a kept frame may be of this text, now a code
        return code

    def maybe(self, text: str | None) -> str | int | None:
        """`text`'s code if it is interned or has now been seen `_INTERN_AT` times, else
        `text` itself (counted). Texts of `_INTERN_MAX_CHARS` or more stay inline: the
        codec compresses those against the store's dictionary instead."""
        if text is None:
            return None
        found = self._codes.get(text)
        if found is not None:
            return found
        if len(text) >= _INTERN_MAX_CHARS:
            return text
        seen = self._seen
        count = seen.get(text, 0) + 1
        if count >= _INTERN_AT:
            seen.pop(text, None)
            return self.code(text)
        if len(seen) >= _SEEN_MAX:
            seen.clear()
        seen[text] = count
        return text

    def keep(self, value: object, text: str, stored: str | bytes | int | None) -> None:
        """Keep `stored` as the stored value of the payload object `value` (whose JSON is
        `text`) in `payloads` if it is final: a code `maybe` finds committed, or a
        compressed frame (`Packer.pack`: its compressor never changes once made) of a
        text with no code. A text `maybe` still counts, or stored while the codec
        samples payloads, is not final."""
        if type(stored) is int:
            if self._codes.get(text) != stored:
                return
        elif type(stored) is not bytes or len(text) > _SHARED_MAX_CHARS:
            return
        kept = self.payloads
        if len(kept) >= _SHARED_MAX:
            kept.clear()
        kept[id(value)] = (value, stored)

    def event_key(self, request_id: str, run: int, at: float) -> tuple[int, float]:
        """`(key, t0)` of the request `request_id` of run code `run`."""
        last = self._last
        if last[0] == request_id and last[1] == run:
            return last[2]  # (three events in four follow one of the same request)
        pair = (request_id, run)
        found = self._keys.get(pair) or self._tx_keys.get(pair)
        if found is not None:
            self._last = (request_id, run, found)
            return found
        conn = self._conn
        assert conn is not None
        row = conn.execute(
            "SELECT key, t0 FROM request_keys WHERE id = ? AND run = ?", (request_id, run)
        ).fetchone()
        found = (int(row[0]), float(row[1])) if row is not None else self._new_key(pair, at)
        self._tx_keys[pair] = found
        if request_id not in self._by_id:
            self._tx_by_id.setdefault(request_id, found)
        self._last = (request_id, run, found)
        return found

    def key(self, request_id: str, at: float) -> tuple[int, float]:
        """`(key, t0)` of the request `request_id`, for rows that do not name a run."""
        found = self._by_id.get(request_id) or self._tx_by_id.get(request_id)
        if found is not None:
            return found
        conn = self._conn
        assert conn is not None
        row = conn.execute(
            "SELECT key, t0 FROM request_keys WHERE id = ? ORDER BY key LIMIT 1", (request_id,)
        ).fetchone()
        found = (
            (int(row[0]), float(row[1]))
            if row is not None
            else self._new_key((request_id, self._codes[""]), at)
        )
        self._tx_by_id[request_id] = found
        return found

    def _new_key(self, pair: tuple[str, int], at: float) -> tuple[int, float]:
        conn = self._conn
        assert conn is not None
        at = round(at, 6)
        cursor = conn.execute(
            "INSERT INTO request_keys (id, run, t0) VALUES (?, ?, ?)", (pair[0], pair[1], at)
        )
        key = int(cursor.lastrowid or 0)
        self._tx_keys[pair] = (key, at)
        return (key, at)

    def finished(self, request_id: str, run_id: str) -> None:
        """The request's last record was written: its key leaves the caches (a late row
        finds it in `request_keys`)."""
        run = self._codes.get(run_id, self._tx_codes.get(run_id))
        if run is not None:
            self._keys.pop((request_id, run), None)
            self._tx_keys.pop((request_id, run), None)
        self._by_id.pop(request_id, None)
        self._tx_by_id.pop(request_id, None)
        self._last = _NO_KEY


_round = float.__round__
"""`round` of a float, without the builtin's lookup of `__round__` (half the cost)."""


def offset_us(at: float, t0: float) -> int:
    """`at` as integer microseconds after `t0`."""
    return _round((at - t0) * 1e6)


RUN_KEYS = (
    "SELECT key, id FROM request_keys WHERE run = (SELECT code FROM strings WHERE text = :run)"
)
"""Every request key of run `:run` (with its request id; `''` for run-level events): the
requests with any stored row, crashed ones included (`request_keys_run`)."""


def delete_keys(conn: sqlite3.Connection, keys: list[int]) -> int:
    """Delete every compact row of the request keys `keys`, and the keys; return how many
    rows of the contract's tables that was."""
    deleted = 0
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for table in COMPACT_TABLES.values():
            deleted += conn.execute(f"DELETE FROM {table} WHERE rk IN ({marks})", chunk).rowcount
        conn.execute(f"DELETE FROM request_keys WHERE key IN ({marks})", chunk)
    return deleted


def keys_of(conn: sqlite3.Connection, request_ids: list[str]) -> list[int]:
    """The request keys of `request_ids` (any run)."""
    keys: list[int] = []
    for start in range(0, len(request_ids), 500):
        chunk = request_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        keys += [
            int(row[0])
            for row in conn.execute(f"SELECT key FROM request_keys WHERE id IN ({marks})", chunk)
        ]
    return keys
