"""The source-path policy: which files on the server's disk a request may name, and how a path
is checked before anything reads it."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputForbidden, InputNotFound, InputTooLarge, InvalidInput, InvalidParameter


@dataclass(frozen=True)
class InputLimits:
    """What a source file may be: where it lies, how large and how long."""

    roots: tuple[Path, ...] = ()
    max_bytes: int = 200 * 1024 * 1024
    max_duration_s: float = 1200.0


def resolve_input_path(raw_path: str, limits: InputLimits, field: str = "audio_path") -> Path:
    """Checks that `raw_path` names a readable regular file inside the allowed roots.

    Returns the resolved (symlinks followed) absolute path.
    """
    resolved = _resolve(raw_path, field)
    quoted = _quote_path(raw_path)
    if limits.roots and not any(resolved.is_relative_to(root) for root in limits.roots):
        allowed = ", ".join(str(root) for root in limits.roots)
        raise InputForbidden(f"{quoted} lies outside the allowed input directories ({allowed})", field=field)
    _check_file(resolved, quoted, limits, field)
    return resolved


def _resolve(raw_path: str, field: str) -> Path:
    """The absolute path `raw_path` names, symlinks followed; refuses what names no path."""
    if not raw_path or not raw_path.strip():
        raise InvalidParameter("give the absolute path of an audio file on the server's disk", field=field)
    if "\x00" in raw_path:
        raise InvalidParameter("contains a NUL character, which no file path can; give a plain path", field=field)
    path = Path(raw_path)
    if not path.is_absolute():
        raise InvalidParameter(f"{_quote_path(raw_path)} is relative; give an absolute path", field=field)
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # a symbolic link loop (RuntimeError before Python 3.13, then OSError)
        raise InvalidInput(
            f"{_quote_path(raw_path)} cannot be resolved: it is a loop of symbolic links or goes through an "
            "unreadable one",
            field=field,
        ) from None


def _check_file(resolved: Path, quoted: str, limits: InputLimits, field: str) -> None:
    """Refuses anything but a readable, non-empty regular file within the size limit."""
    try:
        status = resolved.stat()
    except FileNotFoundError:
        raise InputNotFound(f"no file at {quoted}", field=field) from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {quoted}: {exc.strerror}", field=field) from None
    if stat.S_ISDIR(status.st_mode):
        raise InvalidInput(f"{quoted} is a directory; give the path of an audio file", field=field)
    if not stat.S_ISREG(status.st_mode):
        raise InvalidInput(f"{quoted} is not a regular file (device, pipe or socket)", field=field)
    if status.st_size == 0:
        raise InvalidInput(f"{quoted} is empty", field=field)
    if status.st_size > limits.max_bytes:
        raise InputTooLarge(
            f"{quoted} is {status.st_size / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.0f} MB", field=field
        )
    if not os.access(resolved, os.R_OK):
        raise InvalidInput(f"the server may not read {quoted}", field=field)


def _quote_path(raw_path: str, limit: int = 200) -> str:
    """A path as quoted in an error message: repr'd, and cut short when very long."""
    return repr(raw_path) if len(raw_path) <= limit else repr(raw_path[:limit]) + f"… ({len(raw_path)} characters)"
