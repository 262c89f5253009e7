"""The standard `OTEL_*` variables tracing reads, checked before anything runs.

A value that can never work is refused (`SpecError`: `moat run` and `moat serve` exit 2
before anything runs), naming the variable, its value (header values and URL passwords
masked) and the fix: an endpoint that is not an http(s) URL, a protocol other than
`http/protobuf` (moat exports OTLP over HTTP only), headers that are not NAME=VALUE pairs,
a timeout or `OTEL_BSP_*` setting that is not a positive number (a wait of at most a day),
an unknown compression or sampler, a sampler argument that is not a ratio, a certificate
file that is not there, a credential provider that is not installed, resource attributes
that are not KEY=VALUE pairs. The SDK would log its own line for most of them and go on
with a default, or fail every export.

The `..._TIMEOUT` variables are milliseconds, as the OpenTelemetry specification defines
them; the Python exporter reads them as seconds, so moat passes it `export_timeout_s`.

A value moat reads but does not follow is said once, at start, in moat's log
(`warn_unused`): `OTEL_SDK_DISABLED=true` with `--otel` (no spans are built), and an
`OTEL_TRACES_EXPORTER` naming an exporter other than `otlp`; so is a timeout under 100 ms,
most likely meant in seconds.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from engine.errors import SpecError
from engine.logs import get_logger

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.sampling import Sampler

__all__ = [
    "check_traces",
    "export_timeout_s",
    "mask_url",
    "sampler",
    "traces_url",
    "warn_unused",
]

_log = get_logger("moat.telemetry")

_OTLP = "OTEL_EXPORTER_OTLP_"
_BSP = (
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
)
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_COMPRESSIONS = ("none", "gzip", "deflate")
_TIMEOUT_MS = 10_000.0
"""The specification's default of `OTEL_EXPORTER_OTLP_TIMEOUT`: 10 s."""
_SHORT_MS = 100.0
"""A timeout below this many milliseconds was most likely meant in seconds."""
_MOST_MS = 86_400_000
"""The longest wait a timeout or delay may ask for: a day. Far longer ones overflow the
clock of a thread's wait or a socket's timeout, and would end exports or the run with an
`OverflowError`."""
_CREDENTIAL_PROVIDERS = (
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
)
"""In the order the exporter reads them (the general one first)."""
# A header as the exporter accepts it (its liberal form): a token, `=`, then printable
# ASCII without `"`, `,`, `;` or a backslash; anything else it drops with a warning.
_HEADER = re.compile(r"[ \t]*[!#-'*+\-.0-9A-Z^-z|~]+[ \t]*=[ \t]*[ !#-+\--:<-\[\]-~]*[ \t]*")
_HEADERS_FIX = (
    "give comma-separated NAME=VALUE pairs, with spaces, commas and semicolons in a value "
    "URL-encoded (authorization=Bearer%20TOKEN,x-tenant=acme)"
)


def traces_url(endpoint: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """Where spans are posted: `endpoint` (a collector's base URL) with `/v1/traces`, else
    by the OTLP variables' rules: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, else
    `OTEL_EXPORTER_OTLP_ENDPOINT` (or http://localhost:4318) with `/v1/traces`."""
    if endpoint:
        base = endpoint.rstrip("/")
        return base if base.endswith("/v1/traces") else f"{base}/v1/traces"
    url = environ.get(f"{_OTLP}TRACES_ENDPOINT")
    if url:
        return url
    base = environ.get(f"{_OTLP}ENDPOINT") or "http://localhost:4318"
    return f"{base.removesuffix('/')}/v1/traces"


def check_traces(endpoint: str | None, environ: Mapping[str, str] = os.environ) -> None:
    """Refuse the tracing settings that can never work (`endpoint`: `--otel URL`);
    nothing is refused under `OTEL_SDK_DISABLED=true`, when nothing is exported.

    Raises:
        SpecError: naming the variable, its value and the fix.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    _check_endpoint(endpoint, environ)
    https = urlsplit(traces_url(endpoint, environ)).scheme.lower() == "https"
    _check_protocol(environ)
    _check_headers(environ)
    _check_timeout(environ)
    _check_compression(environ)
    _check_files(environ, https)
    _check_credential_provider(environ)
    sampler(environ)
    _check_bsp(environ)
    _check_resource(environ)


def warn_unused(environ: Mapping[str, str] = os.environ, *, otel: bool) -> None:
    """Say once, in moat's log, which tracing variables moat reads but does not follow
    (`otel`: `--otel` was given)."""
    disabled = environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if disabled and otel:
        _log.warning(
            "telemetry.traces_disabled",
            variable="OTEL_SDK_DISABLED",
            value="true",
            effect="--otel exports no spans",
            fix="unset OTEL_SDK_DISABLED to export traces",
        )
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    others = [n for n in names if n and n not in ("otlp", "none")]
    if others and not disabled:
        traced = otel or "otlp" in names
        _log.warning(
            "telemetry.exporter_not_supported",
            variable="OTEL_TRACES_EXPORTER",
            value=environ["OTEL_TRACES_EXPORTER"],
            effect=f"moat exports traces over OTLP/HTTP only; {', '.join(others)} ignored"
            + ("" if traced else ": no traces are exported"),
            fix="set OTEL_TRACES_EXPORTER=otlp (or pass --otel) and point "
            "OTEL_EXPORTER_OTLP_ENDPOINT at a collector",
        )
    if otel and "none" in names and "otlp" not in names and not disabled:
        _log.warning(
            "telemetry.exporter_overridden",
            variable="OTEL_TRACES_EXPORTER",
            value=environ["OTEL_TRACES_EXPORTER"],
            effect="--otel exports traces over OTLP/HTTP all the same",
            fix="drop --otel to export none",
        )


def sampler(environ: Mapping[str, str] = os.environ) -> Sampler:
    """The sampler `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name, as the SDK
    builds it (`parentbased_always_on` unless set; a ratio of 1 unless given).

    Raises:
        SpecError: an unknown sampler, or a ratio that is not a number from 0 to 1.
    """
    from opentelemetry.sdk.trace import sampling

    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if name not in _SAMPLERS:
        raise SpecError(
            f"OTEL_TRACES_SAMPLER={environ['OTEL_TRACES_SAMPLER']}: not a sampler; give one "
            f"of {', '.join(_SAMPLERS)} (or unset it: parentbased_always_on)"
        )
    fixed = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "parentbased_always_on": sampling.DEFAULT_ON,
        "parentbased_always_off": sampling.DEFAULT_OFF,
    }
    if name in fixed:
        return fixed[name]
    rate = _ratio(environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1", name)
    if name == "traceidratio":
        return sampling.TraceIdRatioBased(rate)
    return sampling.ParentBasedTraceIdRatio(rate)


def mask_url(url: str) -> str:
    """`url` with the password of its user info (`https://user:PASSWORD@host`) masked."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def _ratio(text: str, name: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not 0 <= rate <= 1:
        raise SpecError(
            f"OTEL_TRACES_SAMPLER_ARG={text}: {name} needs the share of traces to keep, a "
            "number from 0 to 1 (0.1 keeps one in ten)"
        )
    return rate


def _setting(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """The variable the exporter reads for `name` (`OTEL_EXPORTER_OTLP_TRACES_NAME`, else
    `OTEL_EXPORTER_OTLP_NAME`) and its value, if either is set."""
    for variable in (f"{_OTLP}TRACES_{name}", f"{_OTLP}{name}"):
        value = environ.get(variable, "")
        if value.strip():
            return variable, value
    return None


def _check_endpoint(endpoint: str | None, environ: Mapping[str, str]) -> None:
    """The URL spans would be posted to, named as it was given."""
    traces, base = f"{_OTLP}TRACES_ENDPOINT", f"{_OTLP}ENDPOINT"
    if endpoint:
        named = f"--otel {mask_url(endpoint)}"
        fix = "give the collector's base URL (http://HOST:4318)"
    elif environ.get(traces):
        named = f"{traces}={mask_url(environ[traces])}"
        fix = "give the full URL spans are posted to (http://HOST:4318/v1/traces)"
    elif environ.get(base):
        named = f"{base}={mask_url(environ[base])}"
        fix = "give the collector's base URL (http://HOST:4318), or unset it for localhost"
    else:
        return
    why = _url_problem(traces_url(endpoint, environ))
    if why is not None:
        raise SpecError(f"{named}: {why}; {fix}")


def _url_problem(url: str) -> str | None:
    """Why spans cannot be posted to `url` (None: they can be tried)."""
    from requests.exceptions import RequestException
    from requests.models import PreparedRequest

    try:
        parts = urlsplit(url.strip())
        if parts.scheme.lower() not in ("http", "https"):
            return "not an http:// or https:// URL"
        _ = parts.port  # out of range or not a number: ValueError
        PreparedRequest().prepare_url(url, None)
    except (ValueError, RequestException):
        return "not a URL (a host with no spaces, a port from 1 to 65535)"
    return None


def _check_protocol(environ: Mapping[str, str]) -> None:
    found = _setting(environ, "PROTOCOL")
    if found is not None and found[1].strip().lower() != "http/protobuf":
        variable, value = found
        raise SpecError(
            f"{variable}={value}: moat exports OTLP over HTTP with protobuf only "
            f"(http/protobuf); set {variable}=http/protobuf or unset it, and point the "
            "endpoint at the collector's OTLP/HTTP port (4318; 4317 is gRPC's)"
        )


def _check_headers(environ: Mapping[str, str]) -> None:
    found = _setting(environ, "HEADERS")
    if found is None:
        return
    variable, value = found
    entries = re.split(r"[ \t]*,[ \t]*", value)
    for number, entry in enumerate(entries, 1):
        if entry and not _HEADER.fullmatch(entry):
            raise SpecError(
                f"{variable}={_mask_headers(entries)}: entry {number} is not NAME=VALUE "
                f"(values masked); {_HEADERS_FIX}"
            )


def _mask_headers(entries: list[str]) -> str:
    """The header entries with every value masked: `authorization=***,x-key:***,***`."""
    shown = []
    for entry in entries:
        found = re.match(r"[ \t]*([^=:\s]+)[ \t]*([=:])", entry)
        shown.append(f"{found.group(1)}{found.group(2)}***" if found else "***" if entry else "")
    return ",".join(shown)


def export_timeout_s(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds the exporter waits for the collector to answer each POST.

    `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT`, in milliseconds
    as the OpenTelemetry specification defines them (10000 unless set). The Python exporter
    reads them as seconds (10000 would wait almost three hours), so moat reads them itself
    and hands the exporter seconds.

    Raises:
        SpecError: the value is not a positive number of milliseconds.
    """
    found = _setting(environ, "TIMEOUT")
    return (_TIMEOUT_MS if found is None else _milliseconds(*found)) / 1000


def _milliseconds(variable: str, value: str) -> float:
    try:
        ms = float(value)
    except ValueError:
        ms = math.nan
    if not 0 < ms <= _MOST_MS:
        raise SpecError(
            f"{variable}={value}: give the milliseconds to wait for the collector to answer "
            f"each POST, a positive number (10000, 10 s, unless set) up to {_MOST_MS} (a day)"
        )
    return ms


def _check_timeout(environ: Mapping[str, str]) -> None:
    found = _setting(environ, "TIMEOUT")
    if found is None:
        return
    variable, value = found
    ms = _milliseconds(variable, value)
    if ms < _SHORT_MS:
        _log.warning(
            "telemetry.timeout_in_milliseconds",
            variable=variable,
            value=value,
            effect=f"each POST to the collector may take {ms:g} ms at most",
            fix=f"the value is in milliseconds (the OpenTelemetry unit); for {ms:g} seconds "
            f"write {variable}={ms * 1000:.0f}",
        )


def _check_compression(environ: Mapping[str, str]) -> None:
    found = _setting(environ, "COMPRESSION")
    if found is not None and found[1].strip().lower() not in _COMPRESSIONS:
        variable, value = found
        raise SpecError(f"{variable}={value}: give one of {', '.join(_COMPRESSIONS)}")


def _check_files(environ: Mapping[str, str], https: bool) -> None:
    """The CA bundle and client certificate the exporter reads (over https only)."""
    for name in ("CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"):
        found = _setting(environ, name)
        if https and found is not None and not os.path.isfile(found[1]):
            variable, value = found
            raise SpecError(f"{variable}={value}: no such file; give the path of a PEM file")


def _check_credential_provider(environ: Mapping[str, str]) -> None:
    variable = next((name for name in _CREDENTIAL_PROVIDERS if environ.get(name)), None)
    if variable is None:
        return
    group = entry_points(group="opentelemetry_otlp_credential_provider")
    if environ[variable] not in group.names:
        installed = ", ".join(sorted(group.names)) or "none is installed"
        raise SpecError(
            f"{variable}={environ[variable]}: no such credential provider "
            f"(entry point group opentelemetry_otlp_credential_provider: {installed}); "
            "install the package that provides it, or unset the variable"
        )


def _check_bsp(environ: Mapping[str, str]) -> None:
    for variable in _BSP:
        value = environ.get(variable, "").strip()
        timed = variable.endswith(("DELAY", "TIMEOUT"))
        if value and not (value.isdigit() and 0 < int(value) <= (_MOST_MS if timed else math.inf)):
            unit = "milliseconds" if timed else "spans"
            most = f" and at most {_MOST_MS} (a day)" if timed else ""
            raise SpecError(f"{variable}={value}: give a whole number of {unit}, at least 1{most}")


def _check_resource(environ: Mapping[str, str]) -> None:
    value = environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    for entry in value.split(","):
        key, sep, _ = entry.partition("=")
        if entry.strip() and not (sep and key.strip()):
            raise SpecError(
                f"OTEL_RESOURCE_ATTRIBUTES={value}: {entry.strip()!r} is not KEY=VALUE; give "
                "comma-separated KEY=VALUE pairs (deployment.environment=prod,team=search)"
            )
