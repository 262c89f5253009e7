"""The exporter's HTTP session: proxies, CA bundle and netrc read from the environment at start."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from engine.telemetry.http_session import SettledSession, settled_session

URL = "http://collector.example:4318/v1/traces"


def settings(session: requests.Session) -> dict[str, object]:
    """What `requests` would send a POST to URL with (no per-request overrides)."""
    return session.merge_environment_settings(URL, {}, None, None, None)


def test_proxies_are_read_at_start_and_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    session = settled_session(URL)
    monkeypatch.setenv("HTTP_PROXY", "http://elsewhere.example:1")
    assert settings(session)["proxies"]["http"] == "http://proxy.example:3128"  # type: ignore[index]
    assert not session.trust_env  # the environment is not read again per request


def test_no_proxy_is_honoured_for_the_collectors_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "collector.example")
    assert settings(settled_session(URL))["proxies"] == {}


def test_netrc_credentials_are_read_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine collector.example login moat password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    session = settled_session(URL)
    netrc.write_text("machine collector.example login other password changed\n")
    prepared = session.prepare_request(requests.Request("POST", URL, data=b"x"))
    expected = requests.Request("POST", URL, auth=("moat", "s3cret")).prepare()
    assert prepared.headers["Authorization"] == expected.headers["Authorization"]


def test_the_ca_bundle_variable_wins_as_requests_would_have_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem")
    session = settled_session(URL)
    session.verify = "/etc/otlp/ca.pem"  # OTEL_EXPORTER_OTLP_CERTIFICATE, as the exporter sets it
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    assert settings(session)["verify"] == "/etc/ssl/bundle.pem"
    assert settings(SettledSession())["verify"] is True


def test_the_otlp_exporter_posts_with_a_settled_session_unless_a_provider_gives_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine.telemetry.traces import otlp_exporter

    def session_of(exporter: object) -> object:
        return exporter._client._transport._session  # type: ignore[attr-defined]

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.example:4318/")
    exporter = otlp_exporter()
    assert isinstance(session_of(exporter), SettledSession)
    assert exporter._endpoint == URL  # type: ignore[attr-defined]
    monkeypatch.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER", "missing")
    with pytest.raises(RuntimeError, match="missing"):  # the SDK looks the provider up itself
        otlp_exporter()
