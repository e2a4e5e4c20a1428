"""Audio files that clients upload (`POST /uploads`) for clients that share no disk with the server.

An upload is checked as a source file is (size, that it decodes, its length), stored under a new
name in the upload directory and usable as `audio_path`, `melody_path` or `continue_from` until
the retention time has passed; `sweep` deletes it then. It is written under a hidden temporary
name and takes its final name only once checked, so a refused or interrupted upload leaves
nothing a request could name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import soundfile as sf

from ..errors import InputTooLarge, InvalidInput, MusicGenError
from .files import read_audio, storage_error
from .paths import InputLimits

logger = logging.getLogger("musicgen_bento")

# libsndfile's name for each container a source may be in, and the extension an upload gets.
_EXTENSIONS = {"WAV": "wav", "WAVEX": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3"}
_COPY_BYTES = 1024 * 1024
_PREFIX = "upload-"
# A temporary file this old belongs to an upload that was interrupted long ago.
_STALE_PARTIAL_S = 3600.0


@dataclass(frozen=True)
class StoredUpload:
    """An accepted upload: where it is, what it holds and when it will be deleted (Unix time)."""

    path: Path
    duration_s: float
    sample_rate: int
    channels: int
    expires_at: float


class UploadStore:
    """The upload directory: stores checked uploads and deletes them after `ttl_s` seconds."""

    def __init__(self, directory: Path, limits: InputLimits, ttl_s: float) -> None:
        self.directory = directory
        self.limits = limits
        self.ttl_s = ttl_s
        self._stopping = threading.Event()

    def start_sweeping(self) -> None:
        """Sweeps now and then on a background thread (often enough that nothing outlives its
        expiry by more than a tenth of the retention time, or 10 minutes), until `stop_sweeping`."""
        interval_s = min(600.0, max(0.5, self.ttl_s / 10))

        def sweep_now_and_then() -> None:
            while not self._stopping.is_set():
                try:
                    self.sweep()
                except OSError as error:  # a volume briefly away: try again next time
                    logger.warning("sweeping uploads failed: %s", error)
                self._stopping.wait(interval_s)

        threading.Thread(target=sweep_now_and_then, name="musicgen-upload-sweeper", daemon=True).start()

    def stop_sweeping(self) -> None:
        self._stopping.set()

    def store(self, source: BinaryIO, filename: str | None = None) -> StoredUpload:
        """Copies `source` in, checks it and gives it its final name; refusals name the field `file`.

        Raises `InputTooLarge` past the size limit and `InvalidInput` for an empty, unreadable,
        truncated or over-long file; nothing is left behind then.
        """
        shown = repr(Path(filename).name[:200]) if filename else "the uploaded file"
        name = f"{_PREFIX}{uuid.uuid4().hex}"
        partial = self.directory / f".{name}.partial"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            size = self._copy(source, partial, shown)
            if size == 0:
                raise InvalidInput(f"{shown} is empty", field="file")
            try:
                clip = read_audio(partial, self.limits, field="file")
                container = sf.info(str(partial)).format
            except MusicGenError as refused:
                # Its messages name the temporary file; the client knows its own name for it.
                refused.message = refused.message.replace(repr(str(partial)), shown)
                raise
            extension = _EXTENSIONS.get(container)
            if extension is None:
                raise InvalidInput(f"{shown} is {container} audio; wav, flac, ogg and mp3 are accepted", field="file")
            final = self.directory / f"{name}.{extension}"
            os.link(partial, final)
        except OSError as error:
            raise storage_error(self.directory, error, "upload directory", "MUSICGEN_UPLOAD_DIR") from None
        finally:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
        return StoredUpload(final.resolve(), clip.duration_s, clip.sample_rate, clip.channels, time.time() + self.ttl_s)

    def _copy(self, source: BinaryIO, target: Path, shown: str) -> int:
        size = 0
        with target.open("wb") as handle:
            while block := source.read(_COPY_BYTES):
                size += len(block)
                if size > self.limits.max_bytes:
                    raise InputTooLarge(
                        f"{shown} is larger than the limit of {self.limits.max_bytes / 1e6:.0f} MB", field="file"
                    )
                handle.write(block)
        return size

    def sweep(self, now: float | None = None) -> int:
        """Deletes the uploads older than the retention time (and long-abandoned temporary files);
        how many it deleted."""
        now = time.time() if now is None else now
        deleted = 0
        if not self.directory.is_dir():
            return 0
        for path in self.directory.iterdir():
            is_upload = path.name.startswith(_PREFIX)
            is_partial = path.name.startswith(f".{_PREFIX}") and path.name.endswith(".partial")
            if not (is_upload or is_partial):
                continue  # never touch what the store did not write
            with contextlib.suppress(OSError):
                age = now - path.stat().st_mtime
                if age > (self.ttl_s if is_upload else max(self.ttl_s, _STALE_PARTIAL_S)):
                    path.unlink()
                    deleted += 1
        return deleted
