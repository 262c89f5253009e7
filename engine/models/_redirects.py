"""Redirects an endpoint answers a chat completion with: followed within its origin only.

A 307 or 308 asks the client to repeat the POST, body and headers included, at another
URL; the official client's HTTP client follows it (dropping `Authorization` alone, and
only on some hops), so a redirect to another origin (scheme, host or port) would hand the
prompt, a key sent in another header (Azure's `api-key`, a gateway's own) and moat's call
context to a server the graph never named. moat follows a redirect only within the
endpoint's own origin (a path moved on the same server) and refuses any other. A 301, 302
or 303 tells a client to fetch the place it names with a GET, without the body (what the
official client's HTTP client does): followed, the prompt would be lost, so moat refuses
those even within the origin. Both HTTP routes refuse alike, with a `NodeError` that names
the endpoint, where the redirect pointed (without its query or credentials) and the fix:
point the model's `base_url` at the final endpoint, if it is trusted. A refused redirect
sent nothing where it pointed, and generated nothing, so it is not billed, and not retried
(it would be refused again).
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx2

from engine.errors import NodeError

__all__ = [
    "FOLLOWED",
    "MAX_REDIRECTS",
    "REDIRECTS",
    "RedirectRefused",
    "redirect_error",
    "redirect_location",
    "refuse_redirects",
]

REDIRECTS = frozenset((301, 302, 303, 307, 308))
"""The statuses that redirect a request (with a `Location`)."""
FOLLOWED = frozenset((307, 308))
"""The redirects that repeat a POST as it was (the others turn it into a GET)."""
MAX_REDIRECTS = 20
"""The most redirects one call follows (the official client's HTTP client's limit)."""
_PATH = "/chat/completions"


class RedirectRefused(Exception):
    """A redirect the client route does not follow, raised before anything was sent where
    it pointed (`refuse_redirects`).

    Args:
        status: the redirect's status.
        target: where it pointed.
        cross: whether that is another origin.
    """

    def __init__(self, status: int, target: httpx2.URL, *, cross: bool) -> None:
        super().__init__(f"redirect ({status}) refused")
        self.status = status
        self.target = target
        self.cross = cross


def redirect_location(
    url: httpx2.URL, status: int, headers: Mapping[str, str]
) -> httpx2.URL | None:
    """Where an answer to a request for `url` redirects, resolved; None when it is no
    redirect (or names no place a client could go)."""
    if status not in REDIRECTS:
        return None
    location = headers.get("location")
    if not location:
        return None
    try:
        return url.join(location)
    except (httpx2.InvalidURL, ValueError):
        return None


def redirect_error(who: str, status: int, target: httpx2.URL, *, cross: bool) -> NodeError:
    """The refusal of a redirect (`status`) to `target`, another origin when `cross`; `who`
    is the model and its endpoint, as `model 'NAME' at URL`."""
    shown = _shown(target)
    endpoint = shown[: -len(_PATH)] if shown.endswith(_PATH) else shown
    if cross:
        return NodeError(
            f"{who}: the endpoint redirected the call ({status}) to another origin, {shown}; "
            "moat does not follow it, since that would send the prompt and the API key "
            f"there: set the model's `base_url` to {endpoint} if you trust that endpoint"
        )
    return NodeError(
        f"{who}: the endpoint redirected the call ({status}) to {shown}, and moat follows "
        f"only 307 and 308 redirects (up to {MAX_REDIRECTS}) for a chat completion: set the "
        f"model's `base_url` to {endpoint}"
    )


def refuse_redirects(client: httpx2.AsyncClient) -> httpx2.AsyncClient:
    """`client`, raising `RedirectRefused` on a redirect the direct route does not follow
    (to another origin, or a 301, 302 or 303 that the client would repeat as a GET without
    the prompt) instead of following it: a response hook, run before the client builds the
    next request. The client's own limit of redirects stays. Returned for chaining."""
    hooks = client.event_hooks
    client.event_hooks = {**hooks, "response": [_refuse, *hooks["response"]]}
    return client


async def _refuse(response: httpx2.Response) -> None:
    url = response.request.url
    status = response.status_code
    target = redirect_location(url, status, response.headers)
    if target is None:
        return
    cross = target.origin != url.origin
    if cross or status not in FOLLOWED:  # (as `DirectRoute.post` decides)
        raise RedirectRefused(status, target, cross=cross)


def _shown(url: httpx2.URL) -> str:
    """`url` without credentials, query or fragment (they may carry secrets)."""
    host = url.host
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{host}{port}{url.path}"
