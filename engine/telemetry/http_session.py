"""The HTTP session the OTLP exporter posts with: the environment read once, not per POST.

`requests` looks at the environment on every request of a session that trusts it: the
proxy variables (`HTTPS_PROXY`, `NO_PROXY`, ..., scanning the whole environment), the CA
bundle variables (`REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`) and `~/.netrc` (or `NETRC`),
which it opens and parses each time it exists. For the span exporter that was about a
fifth of the CPU of a POST (100-200 µs of 450-900 µs for a 240 KB batch, measured A/B in
one process). `settled_session` resolves the same settings once, when tracing starts,
for the collector's URL, and hands them to a session that no longer reads the
environment: the same proxy (or none, as `NO_PROXY` says), the same CA bundle, the same
netrc credentials. A change to those variables or to `~/.netrc` after tracing has started
is not seen until the next start.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from requests.utils import get_environ_proxies, get_netrc_auth

__all__ = ["SettledSession", "settled_session"]


class SettledSession(requests.Session):
    """A `requests.Session` that does not read the environment per request (`trust_env`
    off) but applies what `settled_session` read once: proxies, netrc credentials, and
    the CA bundle variable, which (as `requests` does) wins over the session's `verify`
    when a request does not say otherwise. It remembers how its last request ended
    (`last`), so a failed export can say why even when the exporter's retries were cut
    short."""

    def __init__(self, ca_bundle: str | None = None) -> None:
        super().__init__()
        self.trust_env = False
        self.ca_bundle = ca_bundle
        self.last: tuple[int | None, BaseException | None] = (None, None)
        """The last request's HTTP status, or what it raised."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send `request` as `requests` does, remembering how it ended."""
        try:
            response = super().send(request, **kwargs)
        except Exception as exc:
            self.last = (None, exc)
            raise
        self.last = (response.status_code, None)
        return response

    def merge_environment_settings(
        self,
        url: str,
        proxies: Any,
        stream: Any,
        verify: Any,
        cert: Any,
    ) -> dict[str, Any]:
        """The request's settings over the session's, the CA bundle read at start first."""
        if self.ca_bundle and (verify is True or verify is None):
            verify = self.ca_bundle
        return super().merge_environment_settings(url, proxies, stream, verify, cert)


def settled_session(url: str) -> SettledSession:
    """A session for posting to `url`, with the proxy, CA bundle and netrc settings the
    environment gives now (`requests`' own rules: `NO_PROXY` bypass, `NETRC` or
    `~/.netrc`, `REQUESTS_CA_BUNDLE` then `CURL_CA_BUNDLE`)."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    session = SettledSession(bundle)
    session.proxies.update(get_environ_proxies(url))
    auth = get_netrc_auth(url)
    if auth is not None:
        session.auth = auth
    return session
