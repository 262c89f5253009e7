"""One graph as the server answers it: its pipeline, its run, and its requests' numbers,
tokens and count in flight."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import anyio

from engine.api import Pipeline
from engine.events import LlmCall, Record, RequestRecord
from engine.serve.durable import Commits

_DRAIN_POLL_S = 0.05
"""How often a rotated run is checked for requests still in flight."""


class _Ids(NamedTuple):
    run_id: str
    seq: int
    request_id: str


@dataclass(slots=True)
class _Served:
    """One graph the server answers with: its pipeline, run and request numbering."""

    pipe: Pipeline
    commits: Commits
    run_id: str = ""
    seq: int = 0
    tokens: dict[str, list[int]] = field(default_factory=dict)
    """Tokens so far of each request in flight, summed from its LLM call records, and how
    many of its calls the simulated `sim` provider answered."""

    done: int = 0
    """Requests of the run recorded so far."""
    inflight: dict[str, int] = field(default_factory=dict)
    """Requests in flight per run: a rotated run is finished once it has none."""
    retiring: list[str] = field(default_factory=list)
    """Runs this server started and rotated away from, not finished yet."""
    probing: bool = False
    """A readiness probe's write to the store is under way (`MoatServer._probe`)."""

    def next_request(self, slot: tuple[int, int]) -> _Ids:
        """The run, number and id of the next request (`slot`: see `MoatServer`)."""
        index, count = slot
        seq = self.seq * count + index
        self.seq += 1
        return _Ids(self.run_id, seq, f"{self.run_id}-{seq:06d}")

    def switch(self, run_id: str) -> str:
        """Answer new requests under `run_id`; return the run before it."""
        old, self.run_id = self.run_id, run_id
        self.seq = self.done = 0
        self.pipe.use_run(run_id)
        return old

    async def drained(self, run_id: str) -> None:
        """Return once no request of `run_id` is in flight."""
        while self.inflight.get(run_id, 0):
            await anyio.sleep(_DRAIN_POLL_S)
        self.inflight.pop(run_id, None)

    def watch(self, item: Record) -> None:
        if isinstance(item, RequestRecord):
            self.done += item.run_id == self.run_id  # (a rotated run's last ones are not)
        elif isinstance(item, LlmCall):
            counts = self.tokens.get(item.request_id)
            if counts is not None:
                counts[0] += item.input_tokens
                counts[1] += item.output_tokens
                counts[2] += item.provider == "sim"
