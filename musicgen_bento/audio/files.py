"""Audio files, the one home for reading and writing them: decoding a source into a clip, and
writing output atomically (no partial file ever visible, nothing overwritten)."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ..errors import InputTooLarge, InvalidInput, OutputFull, OutputUnwritable
from .clip import AudioClip
from .paths import InputLimits

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
