"""Fake OpenAI-compatible endpoints on loopback, each billing like the worst legal provider.

`FakeOpenAI` serves `POST /{behaviour}/v1/chat/completions` from a thread, so the real
`openai` client, httpx and the gateway are exercised unchanged. Every attempt that reaches
it is written to a ledger with the tokens the endpoint *bills*, counted as the worst case a
byte-level BPE tokenizer allows: one token per UTF-8 byte of every role and content, plus
OpenAI's chat framing (3 tokens per message, 3 to prime the reply). Behaviours:

- `exact`: a compliant endpoint that always answers with exactly the output limit it was
  sent (`max_completion_tokens` or `max_tokens`), and with 4,096 tokens when none was sent;
- `slow`: `exact`, after a pause;
- `flaky`: the first attempt of each prompt is a 429 (odd tags) or a 500 (even tags), billed
  nothing; the retry is `exact`;
- `hang`: the first attempt of each prompt is answered only after the client gave up, and is
  billed in full (the provider finished the generation); the retry is `exact`;
- `nousage`: `exact`, but the body has no `usage`;
- `badusage`: `exact`, but `usage` holds a null and a word instead of counts;
- `overrun`: non-compliant: bills twice the output limit it was sent.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BEHAVIOURS = ("exact", "slow", "flaky", "hang", "nousage", "badusage", "overrun")
NO_LIMIT_OUTPUT = 4096
"""What an endpoint generates when the request sets no output limit."""
TAG = re.compile(r"\[\[(\d+)\]\]")


@dataclass(frozen=True, slots=True)
class Bill:
    """One attempt as the endpoint saw and billed it."""

    behaviour: str
    tag: int | None
    """The `[[N]]` tag found in the prompt (tests put the request's number there)."""
    input_tokens: int
    output_tokens: int
    body: dict[str, Any]


def billed_input_tokens(messages: list[dict[str, Any]]) -> int:
    """The most input tokens a byte-level BPE endpoint can bill for `messages`."""
    total = 3
    for m in messages:
        total += 3 + len(str(m.get("role", "")).encode()) + len(str(m.get("content", "")).encode())
    return total


def output_limit(body: dict[str, Any]) -> int | None:
    """The output limit a request carried, under either of its names."""
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    return int(value) if value is not None else None


@dataclass(slots=True)
class FakeOpenAI:
    """The loopback server; use as a context manager, read `bills` afterwards."""

    hang_s: float = 0.6
    slow_s: float = 0.05
    bills: list[Bill] = field(default_factory=list)
    _seen: dict[tuple[str, int | None], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    def base_url(self, behaviour: str) -> str:
        """The `base_url` of one behaviour."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/{behaviour}/v1"

    def __enter__(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length))
                status, payload, headers = fake.answer(self.path.split("/")[1], body)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in {**headers, "content-type": "application/json"}.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client hung up (a timed-out attempt)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def answer(self, behaviour: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        """Decide, bill and build one response."""
        messages = body.get("messages", [])
        found = TAG.search(" ".join(str(m.get("content", "")) for m in messages))
        tag = int(found.group(1)) if found else None
        with self._lock:
            attempt = self._seen.get((behaviour, tag), 0)
            self._seen[(behaviour, tag)] = attempt + 1
        if behaviour == "flaky" and attempt == 0:
            self._bill(behaviour, tag, 0, 0, body)
            if (tag or 0) % 2:
                return 429, _error("slow down"), {"retry-after-ms": "10"}
            return 500, _error("upstream failed"), {}
        limit = output_limit(body)
        output = NO_LIMIT_OUTPUT if limit is None else limit
        if behaviour == "overrun":
            output *= 2
        input_tokens = billed_input_tokens(messages)
        self._bill(behaviour, tag, input_tokens, output, body)
        if behaviour == "slow":
            time.sleep(self.slow_s)
        if behaviour == "hang" and attempt == 0:
            time.sleep(self.hang_s)
        usage = {
            "prompt_tokens": input_tokens,
            "completion_tokens": output,
            "total_tokens": input_tokens + output,
        }
        if behaviour == "badusage":
            bad = {"prompt_tokens": None, "completion_tokens": "lots", "total_tokens": None}
            return 200, _completion(body, bad), {}
        return 200, _completion(body, usage if behaviour != "nousage" else None), {}

    def _bill(self, behaviour: str, tag: int | None, inp: int, out: int, body: Any) -> None:
        with self._lock:
            self.bills.append(Bill(behaviour, tag, inp, out, body))


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "code": None}}


def _completion(body: dict[str, Any], usage: dict[str, Any] | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "fake"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Fine, thanks."},
                "finish_reason": "length",
            }
        ],
    }
    if usage is not None:
        result["usage"] = usage
    return result
