"""API keys: a file of named keys, each stored as the SHA-256 hash of its secret (never the secret),
with the limits of what one key may use. `musicgen-bento keys` writes it; the server reads it and
reads it again whenever it changes, so keys come and go without a restart.

A secret is 32 random bytes (`secrets.token_urlsafe`), so a plain SHA-256 of it cannot be searched
back (a slow password hash is for secrets people choose). A presented secret is hashed and compared
with every stored hash in constant time (`hmac.compare_digest`), so the answer's time says nothing
about which bytes matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InvalidParameter, MusicGenError

logger = logging.getLogger("musicgen_bento")

# Every secret starts with this, so that one pasted into the wrong place can be recognised.
SECRET_PREFIX = "mgb_"
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FORMAT_VERSION = 1


class KeysFileError(MusicGenError):
    """The keys file cannot be read or written."""


@dataclass(frozen=True)
class ApiKey:
    """One key: its name (what logs and metrics show), its secret's hash, and its own limits (None:
    the server-wide default; 0: no limit)."""

    name: str
    sha256: str
    created_at: str
    max_running: int | None = None
    max_queued: int | None = None
    audio_s_per_hour: float | None = None

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.sha256, _hash(secret))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> str:
    """A key's name as given, or `InvalidParameter` saying what a name may be."""
    if not KEY_NAME.fullmatch(name):
        raise InvalidParameter(
            f"a key's name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit; got {name!r}",
            field="name",
        )
    return name


# Where the server's guard leaves the key it found, in a request's ASGI scope's state.
KEY_IN_SCOPE = "api_key"


def key_in(scope: Mapping[str, Any]) -> ApiKey | None:
    """The API key a request came with (its ASGI scope); None without keys, or on a public route."""
    key = scope.get("state", {}).get(KEY_IN_SCOPE)
    return key if isinstance(key, ApiKey) else None


class KeysFile:
    """The keys file at `path`: read (and read again when it changes) by the server, written by the
    command line, always whole (written beside it, then renamed over it, readable by its owner only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._keys: tuple[ApiKey, ...] = ()

    def keys(self) -> tuple[ApiKey, ...]:
        """The keys as the file holds them now; the last good ones while it is unreadable."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return ()
        except OSError as error:
            logger.error("the keys file %s cannot be read (%s); keeping the keys it had", self.path, error)
            return self._keys
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self._lock:
            if seen != self._seen:
                try:
                    self._keys = self._read()
                    self._seen = seen
                except KeysFileError as error:
                    logger.error("%s; keeping the keys it had", error.message)
            return self._keys

    def find(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, comparing with every key in constant time."""
        found = None
        for key in self.keys():
            if key.matches(secret) and found is None:
                found = key
        return found

    def add(
        self,
        name: str,
        max_running: int | None = None,
        max_queued: int | None = None,
        audio_s_per_hour: float | None = None,
    ) -> str:
        """Creates a key called `name` and returns its secret (which is not stored anywhere)."""
        check_name(name)
        keys = list(self._read_or_nothing())
        if any(key.name == name for key in keys):
            raise InvalidParameter(f"a key named {name!r} exists; remove it first or choose another name", field="name")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        keys.append(ApiKey(name, _hash(secret), created, max_running, max_queued, audio_s_per_hour))
        self._write(keys)
        return secret

    def remove(self, name: str) -> None:
        keys = list(self._read_or_nothing())
        if not any(key.name == name for key in keys):
            raise InvalidParameter(f"no key is named {name!r} in {self.path}", field="name")
        self._write([key for key in keys if key.name != name])

    def _read_or_nothing(self) -> tuple[ApiKey, ...]:
        return self._read() if self.path.exists() else ()

    def _read(self) -> tuple[ApiKey, ...]:
        try:
            data = json.loads(self.path.read_text())
            return tuple(ApiKey(**entry) for entry in data["keys"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise KeysFileError(
                f"the keys file {self.path} is not one musicgen-bento wrote ({type(error).__name__}: {error})"
            ) from None

    def _write(self, keys: list[ApiKey]) -> None:
        document: dict[str, Any] = {"version": _FORMAT_VERSION, "keys": [asdict(key) for key in keys]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(document, file, indent=2)
                file.write("\n")
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
