"""Audio files, the one home for reading and writing them: decoding a source into a clip, and
writing output atomically (no partial file ever visible, nothing overwritten)."""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch

from ..errors import InputTooLarge, InvalidInput, InvalidParameter, OutputFull, OutputUnwritable
from .clip import AudioClip
from .paths import InputLimits

# soundfile's container per output format, and its subtype for each sample format the container
# holds: ogg and mp3 are lossy, with one subtype whatever the sample format says (pcm16, the default).
_CONTAINERS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}
_SUBTYPES: dict[str, dict[str, str]] = {
    "wav": {"pcm16": "PCM_16", "pcm24": "PCM_24", "float32": "FLOAT"},
    "flac": {"pcm16": "PCM_16", "pcm24": "PCM_24"},
    "ogg": {"pcm16": "VORBIS"},
    "mp3": {"pcm16": "MPEG_LAYER_III"},
}
# MPEG audio's sample rates (MPEG-1, -2 and 2.5): an mp3 file can hold no other.
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def check_output_form(output_format: str, sample_format: str, sample_rate: int | None, rate_field: str) -> None:
    """Refuses a sample format or rate (None: not known yet) that `output_format` cannot hold
    (`rate_field` names what set the rate: sample_rate, or match_source)."""
    if sample_format not in _SUBTYPES[output_format]:
        held = " or ".join(_SUBTYPES[output_format]) if output_format in ("wav", "flac") else "none to choose"
        fix = "wav holds pcm16, pcm24 and float32; flac pcm16 and pcm24"
        raise InvalidParameter(
            f"{output_format} files hold {held}: leave it out or write another format ({fix}); got {sample_format!r}",
            field="sample_format",
        )
    if output_format == "mp3" and sample_rate is not None and sample_rate not in _MP3_RATES:
        raise InvalidParameter(
            f"an mp3 file holds sample rates up to 48000 Hz ({', '.join(map(str, _MP3_RATES))}), not {sample_rate}: "
            "choose one of them, or write wav or flac",
            field=rate_field,
        )


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


@dataclass(frozen=True)
class FileTags:
    """What a file says about itself in its own metadata (WAV LIST/INFO, FLAC and Ogg Vorbis
    comments, MP3 ID3). Which survive where: all of them in FLAC and Ogg; all but `licence` in
    WAV (its INFO chunk has no licence field; `copyright` carries it); `title`, `artist`,
    `comment` and `date` in MP3, in ASCII (the writer stores ID3 text as Latin-1), with no
    `copyright`, `licence` or `software` (LAME may name itself there)."""

    title: str = ""
    artist: str = ""
    comment: str = ""
    copyright: str = ""
    licence: str = ""
    software: str = ""
    date: str = ""

    def for_format(self, output_format: str) -> dict[str, str]:
        """The soundfile string fields to set for `output_format`, empty ones left out."""
        fields = {
            "title": self.title,
            "artist": self.artist,
            "comment": self.comment,
            "copyright": self.copyright,
            "license": self.licence,
            "software": self.software,
            "date": self.date,
        }
        if output_format == "mp3":
            fields = {name: _ascii(value) for name, value in fields.items() if name in _MP3_FIELDS}
        return {name: value for name, value in fields.items() if value}


_MP3_FIELDS = {"title", "artist", "comment", "date"}


def _ascii(text: str) -> str:
    """`text` without what Latin-1 ID3 frames would garble: accents dropped, other characters as '?'."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def write_audio(
    samples: torch.Tensor,
    sample_rate: int,
    directory: Path,
    output_format: str,
    tags: FileTags | None = None,
    sample_format: str = "pcm16",
) -> Path:
    """Writes a new file in `directory` and returns its absolute path.

    The file is written under a hidden temporary name and hard-linked into place only when
    complete, so readers never see a partial file and nothing existing is ever overwritten.
    A failed write leaves nothing behind. `tags` go into the file's own metadata; `sample_format`
    must be one the container holds (`check_output_form`).
    """
    if samples.shape[-1] == 0:
        raise ValueError("no samples to write")  # the request limits make this a bug, never a user's doing
    container, subtype = _CONTAINERS[output_format], _SUBTYPES[output_format][sample_format]
    name = f"musicgen-{uuid.uuid4().hex}.{output_format}"
    final = directory / name
    partial = directory / f".{name}.partial"
    data = samples.detach().to(torch.float32).clamp(-1.0, 1.0).T.contiguous().numpy()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with sf.SoundFile(str(partial), "w", sample_rate, data.shape[1], format=container, subtype=subtype) as handle:
            for name, value in (tags.for_format(output_format) if tags else {}).items():
                setattr(handle, name, value)
            handle.write(data)
        os.link(partial, final)
    except (OSError, sf.LibsndfileError, RuntimeError) as error:
        raise storage_error(directory, error) from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return final.resolve()


class StreamedWav:
    """A WAV file written while its audio is made, for a client and the disk at once.

    The header comes first and already holds the final sizes (`frames` is known in advance), so
    the bytes handed out chunk by chunk form a standard WAV file as they stand once all have
    come. On disk the file grows under a hidden temporary name; `commit` links it into place
    only when every frame is written, and `discard` removes it: no partial file is ever visible
    under its final name. The samples are converted as `write_audio` converts them (`encode`).
    """

    def __init__(
        self,
        directory: Path,
        frames: int,
        sample_rate: int,
        channels: int,
        tags: FileTags | None = None,
        sample_format: str = "pcm16",
    ) -> None:
        name = f"musicgen-{uuid.uuid4().hex}.wav"
        self.path = (directory / name).absolute()  # where `commit` puts it; nothing is there before
        self.header = wav_header(frames, sample_rate, channels, tags, sample_format)
        self.frames = frames
        self.sample_format = sample_format
        self.frame_bytes = channels * SAMPLE_BYTES[sample_format]
        self.written = 0
        self._partial = directory / f".{name}.partial"
        self._directory = directory
        self._file: BinaryIO | None = None

    def _opened(self) -> BinaryIO:
        # Opened on the first write: a stream that never starts leaves nothing on disk.
        if self._file is None:
            try:
                self._directory.mkdir(parents=True, exist_ok=True)
                self._file = open(self._partial, "wb")  # noqa: SIM115 - open for the stream's life
                self._file.write(self.header)
            except OSError as error:
                self.discard()
                raise storage_error(self._directory, error) from None
        return self._file

    def write(self, samples: torch.Tensor) -> bytes:
        """Appends samples (channels, n) and returns their bytes; refuses more than `frames` in all."""
        if self.written + samples.shape[1] > self.frames:
            raise ValueError(f"the stream holds {self.frames} frames; {self.written + samples.shape[1]} were written")
        data = encode(samples, self.sample_format)
        handle = self._opened()
        try:
            handle.write(data)
        except OSError as error:
            raise storage_error(self._directory, error) from None
        self.written += int(samples.shape[1])
        return data

    def commit(self) -> Path:
        """Puts the complete file in place under `path`; an incomplete one is removed instead."""
        try:
            if self.written != self.frames:
                raise ValueError(f"the stream holds {self.frames} frames; only {self.written} were written")
            self._opened().close()
            os.link(self._partial, self.path)
        except OSError as error:
            raise storage_error(self._directory, error) from None
        finally:
            self.discard()
        return self.path

    def discard(self) -> None:
        """Removes the temporary file (after `commit`, only the name it was written under)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        with contextlib.suppress(OSError):
            self._partial.unlink(missing_ok=True)


SAMPLE_BYTES = {"pcm16": 2, "pcm24": 3, "float32": 4}


def encode(samples: torch.Tensor, sample_format: str) -> bytes:
    """Samples (channels, n) as a WAV file's interleaved little-endian data in `sample_format`,
    converted as libsndfile converts the float32 samples `write_audio` gives it (16-bit checked bit
    for bit in the tests): clipped to ±1; PCM scaled by 2^(bits-1) and rounded down, full scale kept
    at its largest code; float32 as it is."""
    clipped = samples.detach().to(torch.float32).clamp(-1.0, 1.0).T.contiguous()
    if sample_format == "float32":
        return bytes(clipped.numpy().astype("<f4").tobytes())
    bits = 8 * SAMPLE_BYTES[sample_format]
    full = 2 ** (bits - 1)
    codes = torch.floor(clipped.to(torch.float64) * full).clamp(-full, full - 1).to(torch.int32).numpy()
    if sample_format == "pcm16":
        return bytes(codes.astype("<i2").tobytes())
    little = codes.astype("<i4").view(np.uint8).reshape(-1, 4)
    return bytes(little[:, :3].tobytes())  # 24-bit: the low three bytes of each


# RIFF INFO chunk ids of the tags a WAV file can carry (it has no licence field; copyright says it).
_INFO_IDS = {"title": b"INAM", "artist": b"IART", "comment": b"ICMT", "copyright": b"ICOP", "software": b"ISFT"}
_INFO_IDS["date"] = b"ICRD"


def wav_header(
    frames: int, sample_rate: int, channels: int, tags: FileTags | None = None, sample_format: str = "pcm16"
) -> bytes:
    """The header of a WAV file of `frames` frames in `sample_format` (PCM, or IEEE float for
    float32): RIFF, fmt, the tags (LIST/INFO) and the data chunk's header, sized for the whole file."""
    width = SAMPLE_BYTES[sample_format]
    block = width * channels
    code = 3 if sample_format == "float32" else 1  # WAVE_FORMAT_IEEE_FLOAT, WAVE_FORMAT_PCM
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, code, channels, sample_rate, sample_rate * block, block, 8 * width)
    info = _info_chunk(tags.for_format("wav") if tags else {})
    data_bytes = frames * block
    riff_size = 4 + len(fmt) + len(info) + 8 + data_bytes
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + fmt + info + b"data" + struct.pack("<I", data_bytes)


def _info_chunk(fields: dict[str, str]) -> bytes:
    body = b"INFO"
    for name, value in fields.items():
        if name not in _INFO_IDS:
            continue
        text = value.encode("utf-8") + b"\0"
        body += _INFO_IDS[name] + struct.pack("<I", len(text)) + text + (b"\0" if len(text) % 2 else b"")
    return b"" if body == b"INFO" else b"LIST" + struct.pack("<I", len(body)) + body


# errno values that mean "no room": a full filesystem, a quota, a file size limit.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS}


def storage_error(
    directory: Path, error: Exception, what: str = "output directory", setting: str = "MUSICGEN_OUTPUT_DIR"
) -> Exception:
    """The client-facing error for a failed write into `directory` (the service's `what`, set by `setting`).

    libsndfile reports a failed write as a message, not an errno, so when the error carries none
    the directory's free space and permissions tell which it was.
    """
    code = getattr(error, "errno", None)
    if code is None:
        code = _probe_directory(directory)
    if code in _NO_SPACE:
        return OutputFull(
            f"the {what} {directory} is full ({os.strerror(code)}); nothing was written. Free space "
            f"there or point {setting} at a larger volume; requests succeed again as soon as there is room",
        )
    if code in _NO_WRITE:
        return OutputUnwritable(
            f"the server cannot write to its {what} {directory} ({os.strerror(code)}); nothing was "
            f"written. Check the volume's permissions and mount ({setting})",
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
