"""The model layer: the gateway every call goes through, and the `sim` and `openai` providers.

```python
gateway = Gateway({"small": ModelSpec(provider="sim", profile="small")})
client = gateway.client("small", CallScope(request=info, node_id="answer"))
completion = await client.complete(prompt="Hello", task="answer")
```
"""

from __future__ import annotations

from engine.models._egress import find_pii, redact_text
from engine.models.base import (
    Provider,
    ProviderRequest,
    ProviderResponse,
    ProviderTimeout,
    ResponseLost,
    estimate_tokens,
    max_input_tokens,
)
from engine.models.breaker import BreakerState, CircuitBreaker
from engine.models.budget import RequestBudget, Reservation
from engine.models.gateway import DEFAULT_MAX_TOKENS, CallScope, Emit, Gateway
from engine.models.prices import PRICES, PRICES_AS_OF, is_priced, table_price
from engine.models.sim import SIM_PROFILES, SimProfile, SimProvider, sim_profile

# Plain `sorted()` order, as tests/engine/test_public_api.py checks for every package.
__all__ = [  # noqa: RUF022
    "BreakerState",
    "CallScope",
    "CircuitBreaker",
    "DEFAULT_MAX_TOKENS",
    "Emit",
    "Gateway",
    "PRICES",
    "PRICES_AS_OF",
    "Provider",
    "ProviderRequest",
    "ProviderResponse",
    "ProviderTimeout",
    "RequestBudget",
    "Reservation",
    "ResponseLost",
    "SIM_PROFILES",
    "SimProfile",
    "SimProvider",
    "estimate_tokens",
    "find_pii",
    "is_priced",
    "max_input_tokens",
    "redact_text",
    "sim_profile",
    "table_price",
]
