"""A node plugin's call with settings no model can take is refused up front, in words.

`ModelClient.complete` is public API: a plugin may pass a negative or fractional
`max_tokens`, a string temperature, a list for a schema or a message. Each is a `NodeError`
naming the node, the model and what to pass instead, before anything is reserved or sent
(no `llm_calls` row: no call was made), never a `ValueError` from the budget, an
`OverflowError` from the cost estimate or a provider's traceback.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.errors import NodeError
from engine.graph.spec import ModelSpec
from engine.models import CallScope, Gateway, RequestBudget
from engine.plugin.context import RequestInfo

SIM = ModelSpec(provider="sim", profile="small", time_scale=0)


def _scope(limit_usd: float | None = 1.0) -> CallScope:
    info = RequestInfo(id="r1", run_id="run", seq=0, tenant="t", input={"prompt": "hi"})
    return CallScope(request=info, node_id="plugin", budget=RequestBudget(limit_usd))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"max_tokens": -5}, r"`max_tokens` must be a whole number from 1 to 2147483647, not -5"),
        ({"max_tokens": 0}, r"`max_tokens` must be a whole number .*, not 0"),
        ({"max_tokens": 1.5}, r"`max_tokens` must be a whole number .*, not 1\.5"),
        ({"max_tokens": True}, r"`max_tokens` must be a whole number .*, not True"),
        ({"max_tokens": "10"}, r"`max_tokens` must be a whole number .*, not '10'"),
        ({"max_tokens": 10**400}, r"`max_tokens` must be a whole number .*, not 1000+\.\.\."),
        ({"temperature": "hot"}, r"`temperature` must be a number of at least 0, not 'hot'"),
        ({"temperature": -1.0}, r"`temperature` must be a number of at least 0, not -1\.0"),
        ({"temperature": float("nan")}, r"`temperature` must be a number .*, not nan"),
        ({"schema": [1]}, r"`schema` must be a JSON Schema object \(a mapping\), not \[1\]"),
        ({"task": 5}, r"`task` must be a name such as 'answer' or 'risk', not 5"),
        ({"messages": ["hi"]}, r"`messages\[0\]` is 'hi', not a mapping; pass `messages` as"),
        ({"messages": "hello"}, r"`messages\[0\]` is 'h', not a mapping"),
    ],
)
async def test_a_call_a_model_cannot_take_is_refused_naming_the_node_model_and_fix(
    given: dict[str, Any], said: str
) -> None:
    scope = _scope()
    arguments = {"prompt": "hello", **given}
    async with Gateway({"m": SIM}) as gateway:
        with pytest.raises(NodeError, match=r"^node 'plugin': (model 'm': )?" + said) as caught:
            await gateway.client("m", scope).complete(**arguments)
    assert caught.value.node_id == "plugin" and caught.value.request_id == "r1"
    assert scope.calls == [] and scope.budget.spent_usd == scope.budget.reserved_usd == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "given",
    [
        {"max_tokens": 1},
        {"max_tokens": 2**31 - 1},
        {"temperature": 0},
        {"temperature": 1.7},
        {"schema": {"type": "object"}},
        {"task": "answer"},
        {"messages": [{"role": "user", "content": "hi"}], "prompt": None},
    ],
)
async def test_every_setting_a_model_can_take_is_sent(given: dict[str, Any]) -> None:
    scope = _scope(limit_usd=None)
    async with Gateway({"m": SIM}) as gateway:
        await gateway.client("m", scope).complete(**{"prompt": "hello", **given})
    assert [c.status for c in scope.calls] == ["ok"]
