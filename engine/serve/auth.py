"""API keys: a file of sha256 hashes, each mapped to a tenant, and the caller's tenant.

The keys file holds one key per line, `TENANT sha256:HEX`, where HEX is the SHA-256 of the
key (`printf %s "$KEY" | sha256sum`); `#` starts a comment. Only hashes are kept, on disk and
in memory, so the file can be read by operators without exposing the keys. Keys may also
come from the environment (`MOAT_API_KEYS=TENANT=KEY,...`, the usual channel for secrets),
hashed as soon as they are read. Without keys the server accepts any key (or none) and the
tenant is the request's `user`, else `public`; the CLI allows that only on loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from pathlib import Path

from engine.errors import SpecError

__all__ = ["ENV_KEYS", "KeyRing", "hash_key", "keys_from_env", "load_keys"]

ENV_KEYS = "MOAT_API_KEYS"
"""The environment variable of API keys in clear, `TENANT=KEY,TENANT=KEY` (hashed on read)."""

_LINE = re.compile(r"^(?P<tenant>[A-Za-z0-9_.@-]{1,128})\s+sha256:(?P<hex>[0-9a-fA-F]{64})$")
_TENANT = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")


def hash_key(key: str) -> str:
    """The stored form of a key: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """Hashed API keys and their tenants; `None` keys means every key is accepted."""

    def __init__(self, keys: Mapping[str, str] | None) -> None:
        self.keys = dict(keys) if keys is not None else None

    @property
    def open(self) -> bool:
        """True when any key (or none) is accepted."""
        return self.keys is None

    def tenant(self, authorization: str | None, user: str | None) -> str | None:
        """The caller's tenant, or None when the key is missing or unknown.

        Raises:
            ValueError: without keys, a `user` that cannot name a tenant (made `public`,
                it would share that tenant's cache with every other such user).
        """
        if self.keys is None:
            if user is None:
                return "public"
            if not _TENANT.match(user):
                raise ValueError(
                    f"user {user[:40]!r} cannot name a tenant: without --keys the `user` "
                    "field names the caller's tenant (its own cache and audit trail), 1 to "
                    "128 letters, digits and `_.@-`; send such an id (a hash of the "
                    "user's name, say) or no `user`"
                )
            return user
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        digest = hash_key(authorization[7:].strip())
        for known, tenant in self.keys.items():
            if hmac.compare_digest(known, digest):  # no timing hint about near-misses
                return tenant
        return None


def load_keys(path: str | Path) -> KeyRing:
    """Read a keys file.

    Raises:
        SpecError: the file is missing or not UTF-8 text (naming the line), a line is
            not `TENANT sha256:HEX` (saying which part is wrong; a plain key is refused
            with how to hash it, and never repeated), or a key is given to two tenants.
    """
    text = _keys_text(path)
    keys: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise SpecError(_line_problem(line), path=str(path), line=number)
        digest, tenant = match["hex"].lower(), match["tenant"]
        if keys.setdefault(digest, tenant) != tenant:
            raise SpecError(
                f"this key (tenant {tenant!r}) is also the key of line {lines[digest]} "
                f"(tenant {keys[digest]!r}); a key names one tenant, so remove one of the lines",
                path=str(path),
                line=number,
            )
        lines.setdefault(digest, number)
    if not keys:
        raise SpecError("the keys file has no keys (lines `TENANT sha256:HEX`)", path=str(path))
    return KeyRing(keys)


def _keys_text(path: str | Path) -> str:
    """The keys file's text (a UTF-8 byte order mark, as some editors write, dropped)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read the keys file: {exc.strerror}", path=str(path)) from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError(
            f"byte 0x{raw[exc.start]:02x} is not UTF-8 text; a keys file holds ASCII lines "
            "`TENANT sha256:HEX`, so save it as UTF-8 or ASCII",
            path=str(path),
            line=line,
            column=column,
        ) from exc


_FORMAT = (
    'a key line is `TENANT sha256:HEX` with HEX the SHA-256 of the key (printf %s "$KEY" '
    "| sha256sum); keys are never stored in clear"
)


def _line_problem(line: str) -> str:
    """What is wrong with a key line that is not `TENANT sha256:HEX`, never showing what
    may be a key in clear (only a tenant before a hash, and the hash, are looked at)."""
    parts = line.split()
    at = next((i for i, part in enumerate(parts) if part.startswith("sha256:")), None)
    if at is None:
        return f"this line has no `sha256:HEX`: {_FORMAT}"
    if at < len(parts) - 1:
        return f"this line has more after its `sha256:HEX` (a comment starts with #): {_FORMAT}"
    tenant = " ".join(parts[:at])
    if not tenant:
        return f"this line has no TENANT before its `sha256:HEX`: {_FORMAT}"
    if not _TENANT.match(tenant):
        return (
            f"tenant {tenant[:40]!r} is not a tenant name: 1 to 128 letters, digits and "
            "`_.@-`, without spaces"
        )
    digest = parts[at].removeprefix("sha256:")
    wrong = f"is {len(digest)} characters"
    if len(digest) == 64:
        wrong = "has characters that are not hex digits"
    return (
        f"the hash of tenant {tenant!r} {wrong}: HEX is the 64 hex digits of the key's "
        'SHA-256 (printf %s "$KEY" | sha256sum)'
    )


def keys_from_env(value: str) -> KeyRing:
    """Read `TENANT=KEY,TENANT=KEY` (the value of `MOAT_API_KEYS`); only hashes are kept.

    Raises:
        SpecError: an entry is not `TENANT=KEY`, or a key is given to two tenants (the
            message never repeats a key).
    """
    keys: dict[str, str] = {}
    entries: dict[str, int] = {}
    for number, entry in enumerate(value.split(","), 1):
        tenant, sep, key = entry.strip().partition("=")
        if not sep or not _TENANT.match(tenant) or not key.strip():
            raise SpecError(
                f"${ENV_KEYS}: entry {number} is not TENANT=KEY (tenants are letters, "
                "digits and _.@-; entries are separated by commas)"
            )
        digest = hash_key(key.strip())
        if keys.setdefault(digest, tenant) != tenant:
            raise SpecError(
                f"${ENV_KEYS}: the key of entry {number} (tenant {tenant!r}) is also the key "
                f"of entry {entries[digest]} (tenant {keys[digest]!r}); a key names one "
                "tenant, so remove one of the entries"
            )
        entries.setdefault(digest, number)
    return KeyRing(keys)
