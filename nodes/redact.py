"""The `redact` node: replaces PII with typed numbered placeholders, and puts it back.

`mode: redact` (the default) turns `Mail ann@example.com or call +44 20 7946 0958` into
`Mail [EMAIL_1] or call [PHONE_1]`: placeholders are typed and numbered per kind, and the
same literal gets the same placeholder everywhere in the request. Two writings of one value
(`4111 1111 1111 1111` and `4111-1111-1111-1111`, `Ann@Example.com` and `ann@example.com`)
get a placeholder each: restoring sees only the placeholder the model wrote, never which
occurrence it stands for, so one placeholder must mean one literal for the text to come
back exactly as its user wrote it. Detection and validators live in `engine.pii`, the
detector the gateway's egress redaction uses too; kinds are
`EMAIL PHONE CARD IBAN IP SSN NINO SECRET`.

Values written back to back hide one another from the detector (a phone number run straight
into another): redaction goes on until the text it hands out holds nothing the detector
finds outside its own placeholders (`engine.pii.redact`, which the gateway's egress
redaction uses too).

The mapping from placeholders to originals never leaves the request: it is kept in a
request-scoped vault obtained through `ctx.memo("redact:vault:" + vault)`, and is not part of
the output or of any event (events carry counts only). A second node with
`mode: restore` and the same `vault` name puts the originals back into a final answer:

```yaml
clean: {type: redact, with: {text: "{{ input.prompt }}"}}
answer: {type: model, with: {model: large, prompt: "{{ clean.text }}"}}
final: {type: redact, with: {mode: restore, text: "{{ answer.text }}"}}
```
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Collection
from functools import partial
from typing import Literal

from pydantic import BaseModel, Field

from engine import EventType, Node, NodeContext
from engine.pii import KINDS, PiiKind, Span, redact
from nodes._support.offload import off_loop

__all__ = ["PiiVault", "RedactNode"]

_PLACEHOLDER = re.compile(r"\[(" + "|".join(KINDS) + r")_(\d+)\]")


class PiiVault:
    """The request-scoped mapping between placeholders and original values."""

    def __init__(self) -> None:
        self._originals: dict[str, str] = {}
        self._by_value: dict[tuple[str, str], str] = {}
        self._counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._literal: set[str] = set()
        """Placeholder-like text the request itself holds (`[EMAIL_1]` typed by its
        user): never handed out, so restoring cannot turn it into someone's value."""

    def placeholder(self, kind: str, value: str) -> str:
        """The placeholder of `value` as written, the same one every time within the vault.

        Keyed by the literal, not by a normalised value: `restore` puts back exactly what
        a placeholder was handed out for, so two writings of one card need two placeholders.
        """
        key = (kind, value)
        existing = self._by_value.get(key)
        if existing is not None:
            return existing
        token = ""
        while not token or token in self._literal:
            self._counters[kind] += 1
            token = f"[{kind}_{self._counters[kind]}]"
        self._by_value[key] = token
        self._originals[token] = value
        return token

    def redact(
        self, text: str, kinds: Collection[str], spans: list[Span] | None = None
    ) -> tuple[str, dict[str, int]]:
        """`text` with every detected value of `kinds` replaced; counts of spans by kind.

        Goes on until the detector finds nothing of `kinds` in the result outside this
        vault's placeholders (`engine.pii.redact`). Safe in a worker thread: the vault is
        locked while it changes. `spans` are `detect(text)` when the caller has them.
        """
        if "[" in text:
            with self._lock:
                for literal in _PLACEHOLDER.finditer(text):
                    if literal.group() not in self._originals:  # the text's own
                        self._literal.add(literal.group())
        return redact(text, self._token, kinds, placed=self._placed, spans=spans)

    def _token(self, span: Span) -> str:
        with self._lock:
            return self.placeholder(span.kind, span.value)

    def _placed(self, text: str) -> list[tuple[int, int]]:
        """Where this vault's placeholders stand in `text`."""
        ours = self._originals
        return [m.span() for m in _PLACEHOLDER.finditer(text) if m.group() in ours]

    def restore(self, text: str) -> tuple[str, dict[str, int]]:
        """`text` with known placeholders replaced by their originals; counts by kind."""
        restored: Counter[str] = Counter()

        def put_back(m: re.Match[str]) -> str:
            original = self._originals.get(m.group())
            if original is None:
                return m.group()
            restored[m.group(1)] += 1
            return original

        return _PLACEHOLDER.sub(put_back, text), dict(sorted(restored.items()))

    def __len__(self) -> int:
        return len(self._originals)

    def __repr__(self) -> str:
        # never show the originals
        return f"<PiiVault values={len(self)}>"


class RedactNode(Node):
    """Replaces PII with typed placeholders ([EMAIL_1], [CARD_1], ...) or restores them."""

    type_name = "redact"
    event_types = (EventType.PII_REDACTED.value,)

    class Config(BaseModel):
        """Settings of a `redact` node."""

        text: str = Field(description="The text to redact (or, in restore mode, to restore).")
        mode: Literal["redact", "restore"] = Field(
            default="redact",
            description="`redact` replaces PII with placeholders; `restore` puts the "
            "originals of this request back.",
        )
        kinds: list[PiiKind] | None = Field(
            default=None,
            description="Which kinds to redact (default all): EMAIL PHONE CARD IBAN IP SSN "
            "NINO SECRET.",
        )
        vault: str = Field(
            default="default",
            description="Name of the request-scoped placeholder mapping shared by the "
            "redact and restore nodes of a request.",
        )

    class Output(BaseModel):
        """What a `redact` node returns."""

        text: str = Field(description="The redacted (or restored) text.")
        found: dict[str, int] = Field(
            description="Number of replaced spans by kind (restore mode: restored ones)."
        )
        count: int = Field(description="Total number of replaced spans.")

    async def run(self, config: Config, ctx: NodeContext) -> Output:
        """Redact or restore `config.text` using the request's vault."""
        vault = await _vault(ctx, config.vault)
        if config.mode == "restore":
            text, found = vault.restore(config.text)
            ctx.log.debug("redact.restored", found=found)
            return self.Output(text=text, found=found, count=sum(found.values()))
        kinds = frozenset(config.kinds) if config.kinds else frozenset(KINDS)
        # a long text is scanned in a worker thread
        text, found = await off_loop(config.text, partial(vault.redact, kinds=kinds))
        total = sum(found.values())
        ctx.emit(
            EventType.PII_REDACTED,
            decision="redacted" if total else "clean",
            reason_codes=[f"PII_{kind}" for kind in found],
            payload={"found": found, "count": total, "vault_size": len(vault)},
        )
        return self.Output(text=text, found=found, count=total)


async def _vault(ctx: NodeContext, name: str) -> PiiVault:
    async def create() -> PiiVault:
        return PiiVault()

    vault, _ = await ctx.memo("redact:vault:" + name, create)
    return vault
