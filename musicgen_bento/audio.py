"""Audio I/O, the one home for it: checking and reading source files, shaping audio for the
model, joining continuations and writing output files atomically."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as audio_functional

from .errors import (
    InputForbidden,
    InputNotFound,
    InputTooLarge,
    InvalidInput,
    InvalidParameter,
    OutputFull,
    OutputUnwritable,
)

OutputFormat = Literal["wav", "flac", "ogg", "mp3"]

# soundfile's (format, subtype) per output format; 16-bit PCM where the format has a choice.
_WRITE_FORMATS: dict[str, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
MEDIA_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "mp3": "audio/mpeg",
}
# How long the correction at a continuation's join fades out: long enough to be inaudible,
# short enough not to touch the music.
_JOIN_FADE_S = 0.005


@dataclass(frozen=True)
class AudioClip:
    """Audio as float32 samples shaped (channels, frames), with its sample rate."""

    samples: torch.Tensor
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


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
    if not raw_path or not raw_path.strip():
        raise InvalidParameter("give the absolute path of an audio file on the server's disk", field=field)
    if "\x00" in raw_path:
        raise InvalidParameter("contains a NUL character, which no file path can; give a plain path", field=field)
    quoted = _quote_path(raw_path)
    path = Path(raw_path)
    if not path.is_absolute():
        raise InvalidParameter(f"{quoted} is relative; give an absolute path", field=field)
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError):  # a symbolic link loop (RuntimeError before Python 3.13, then OSError)
        raise InvalidInput(
            f"{quoted} cannot be resolved: it is a loop of symbolic links or goes through an unreadable one",
            field=field,
        ) from None
    if limits.roots and not any(resolved.is_relative_to(root) for root in limits.roots):
        allowed = ", ".join(str(root) for root in limits.roots)
        raise InputForbidden(f"{quoted} lies outside the allowed input directories ({allowed})", field=field)
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        raise InputNotFound(f"no file at {quoted}", field=field) from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {quoted}: {exc.strerror}", field=field) from None
    if stat.S_ISDIR(mode):
        raise InvalidInput(f"{quoted} is a directory; give the path of an audio file", field=field)
    if not stat.S_ISREG(mode):
        raise InvalidInput(f"{quoted} is not a regular file (device, pipe or socket)", field=field)
    size = resolved.stat().st_size
    if size == 0:
        raise InvalidInput(f"{quoted} is empty", field=field)
    if size > limits.max_bytes:
        raise InputTooLarge(
            f"{quoted} is {size / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.0f} MB", field=field
        )
    if not os.access(resolved, os.R_OK):
        raise InvalidInput(f"the server may not read {quoted}", field=field)
    return resolved


def _quote_path(raw_path: str, limit: int = 200) -> str:
    """A path as quoted in an error message: repr'd, and cut short when very long."""
    return repr(raw_path) if len(raw_path) <= limit else repr(raw_path[:limit]) + f"… ({len(raw_path)} characters)"


def read_audio(path: Path, limits: InputLimits, field: str = "audio_path") -> AudioClip:
    """Decodes a wav, flac, ogg or mp3 file into float32 samples, refusing what can't be used."""
    unreadable = f"{str(path)!r} is not a readable audio file; wav, flac, ogg and mp3 are accepted"
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        raise InvalidInput(unreadable, field=field) from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise InvalidInput(unreadable, field=field)
    if info.frames > 0 and info.frames / info.samplerate > limits.max_duration_s:
        raise InputTooLarge(
            f"{str(path)!r} lasts {info.frames / info.samplerate:.1f} s; the limit is {limits.max_duration_s:.0f} s",
            field=field,
        )
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError):
        raise InvalidInput(f"{str(path)!r} is truncated or corrupt and could not be decoded", field=field) from None
    if data.shape[0] == 0:
        raise InvalidInput(f"{str(path)!r} holds no audio samples", field=field)
    if not np.isfinite(data).all():
        raise InvalidInput(f"{str(path)!r} holds non-finite samples", field=field)
    return AudioClip(torch.from_numpy(np.ascontiguousarray(data.T)), int(sample_rate))


def to_model_format(clip: AudioClip, sample_rate: int, channels: int) -> AudioClip:
    """Resamples to the model's rate (torchaudio) and mixes or duplicates to its channel count."""
    samples = clip.samples
    if clip.sample_rate != sample_rate:
        samples = audio_functional.resample(samples, clip.sample_rate, sample_rate)
    if samples.shape[0] != channels:
        mono = samples.mean(dim=0, keepdim=True)
        samples = mono.expand(channels, -1).contiguous()
    return AudioClip(samples.contiguous(), sample_rate)


def fit_length(samples: torch.Tensor, frames: int) -> torch.Tensor:
    """Cuts `samples` (channels, n) to `frames`, or pads with silence."""
    if samples.shape[1] >= frames:
        return samples[:, :frames]
    padding = torch.zeros(samples.shape[0], frames - samples.shape[1], dtype=samples.dtype)
    return torch.cat([samples, padding], dim=1)


def smooth_join(
    before: torch.Tensor, after: torch.Tensor, reference_end: torch.Tensor, sample_rate: int
) -> torch.Tensor:
    """Shifts the start of `after` so it continues from the last sample of `before` without a click.

    The model decodes its prompt and continuation as one stream, so `after` continues smoothly
    from the model's own rendering of the prompt (`reference_end`, its last sample per channel),
    not from the original source. The difference between the two at the join is added to
    `after` and faded out over a few milliseconds.
    """
    fade = min(after.shape[1], max(1, int(_JOIN_FADE_S * sample_rate)))
    offset = (before[:, -1] - reference_end).unsqueeze(1)
    ramp = torch.linspace(1.0, 0.0, fade, dtype=after.dtype).unsqueeze(0)
    joined = after.clone()
    joined[:, :fade] += offset * ramp
    return joined


def write_audio(samples: torch.Tensor, sample_rate: int, directory: Path, output_format: str) -> Path:
    """Writes a new file in `directory` and returns its absolute path.

    The file is written under a hidden temporary name and hard-linked into place only when
    complete, so readers never see a partial file and nothing existing is ever overwritten.
    A failed write leaves nothing behind.
    """
    if samples.shape[-1] == 0:
        raise ValueError("no samples to write")  # the request limits make this a bug, never a user's doing
    container, subtype = _WRITE_FORMATS[output_format]
    name = f"musicgen-{uuid.uuid4().hex}.{output_format}"
    final = directory / name
    partial = directory / f".{name}.partial"
    data = samples.detach().to(torch.float32).clamp(-1.0, 1.0).T.contiguous().numpy()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        sf.write(str(partial), data, sample_rate, format=container, subtype=subtype)
        os.link(partial, final)
    except (OSError, sf.LibsndfileError, RuntimeError) as error:
        raise _output_error(directory, error) from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return final.resolve()


# errno values that mean "no room": a full filesystem, a quota, a file size limit.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _output_error(directory: Path, error: Exception) -> Exception:
    """The client-facing error for a failed write into the output directory.

    libsndfile reports a failed write as a message, not an errno, so when the error carries none
    the directory's free space and permissions tell which it was.
    """
    code = getattr(error, "errno", None)
    if code is None:
        code = _probe_directory(directory)
    if code in _NO_SPACE:
        return OutputFull(
            f"the output directory {directory} is full ({os.strerror(code)}); nothing was written. Free space "
            "there or point MUSICGEN_OUTPUT_DIR at a larger volume; requests succeed again as soon as there is room",
        )
    if code in _NO_WRITE:
        return OutputUnwritable(
            f"the server cannot write to its output directory {directory} ({os.strerror(code)}); nothing was "
            "written. Check the volume's permissions and mount (MUSICGEN_OUTPUT_DIR)",
        )
    return error


def _probe_directory(directory: Path) -> int | None:
    """Why `directory` can't take a file, as an errno (None when it looks fine)."""
    try:
        usage = os.statvfs(directory)
    except OSError as error:
        return error.errno
    if usage.f_bavail * usage.f_frsize < 64 * 1024:
        return errno.ENOSPC
    if not os.access(directory, os.W_OK) or usage.f_flag & os.ST_RDONLY:
        return errno.EROFS if usage.f_flag & os.ST_RDONLY else errno.EACCES
    return None


def audio_file_duration_s(path: Path) -> float:
    """Length of an audio file as its decoder reports it."""
    info = sf.info(str(path))
    return info.frames / info.samplerate
