"""Audio I/O: checking source paths, decoding every accepted format, shaping, joining and writing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_bento.audio.clip import AudioClip, fit_length, smooth_join, to_model_format
from musicgen_bento.audio.files import FileTags, StreamedWav, read_audio, write_audio
from musicgen_bento.audio.paths import InputLimits, resolve_input_path
from musicgen_bento.errors import (
    InputForbidden,
    InputNotFound,
    InputTooLarge,
    InvalidInput,
    InvalidParameter,
    OutputFull,
    OutputUnwritable,
)

LIMITS = InputLimits()


@pytest.mark.parametrize(
    ("name", "sample_rate", "channels"),
    [
        ("a.wav", 44100, 2),
        ("b.wav", 16000, 1),
        ("c.flac", 48000, 2),
        ("d.ogg", 22050, 1),
        ("e.mp3", 44100, 2),
        ("f.mp3", 32000, 1),
    ],
    ids=["wav-44k-stereo", "wav-16k-mono", "flac-48k-stereo", "ogg-22k-mono", "mp3-44k-stereo", "mp3-32k-mono"],
)
def test_reads_every_accepted_format(
    make_tone: Callable[..., Path], name: str, sample_rate: int, channels: int
) -> None:
    path = make_tone(name, seconds=2.0, sample_rate=sample_rate, channels=channels)
    clip = read_audio(resolve_input_path(str(path), LIMITS), LIMITS)
    assert clip.sample_rate == sample_rate
    assert clip.channels == channels
    assert clip.samples.dtype == torch.float32
    assert clip.duration_s == pytest.approx(2.0, abs=0.08)  # mp3 frames pad the end a little


def test_converts_to_the_model_rate_and_channels(make_tone: Callable[..., Path]) -> None:
    clip = read_audio(make_tone("s.wav", seconds=1.0, sample_rate=44100, channels=2), LIMITS)
    mono = to_model_format(clip, 32000, 1)
    assert mono.samples.shape == (1, 32000)
    stereo = to_model_format(AudioClip(mono.samples, 32000), 32000, 2)
    assert stereo.samples.shape == (2, 32000)
    assert torch.equal(stereo.samples[0], stereo.samples[1])


def _fifo(tmp_path: Path) -> str:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize(
    ("make_path", "error", "message"),
    [
        (lambda tmp: str(tmp / "missing.wav"), InputNotFound, "no file"),
        (lambda tmp: str(tmp), InvalidInput, "is a directory"),
        (lambda tmp: "/dev/null", InvalidInput, "not a regular file"),
        (_fifo, InvalidInput, "not a regular file"),
        (lambda tmp: "relative/path.wav", InvalidParameter, "relative"),
        (lambda tmp: "  ", InvalidParameter, "absolute path"),
    ],
    ids=["missing", "directory", "device", "fifo", "relative", "blank"],
)
def test_refuses_paths_that_are_not_files(
    tmp_path: Path, make_path: Callable[[Path], str], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        resolve_input_path(make_path(tmp_path), LIMITS)
    assert caught.value.field == "audio_path"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"this is not audio at all" * 100, "not a readable audio file")],
    ids=["empty", "text"],
)
def test_refuses_files_that_are_not_audio(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match=message):
        read_audio(resolve_input_path(str(path), LIMITS), LIMITS)


def test_refuses_truncated_files(make_tone: Callable[..., Path]) -> None:
    path = make_tone("t.flac", seconds=2.0)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InvalidInput, match="truncated or corrupt") as caught:
        read_audio(resolve_input_path(str(path), LIMITS), LIMITS)
    assert caught.value.field == "audio_path"


def test_refuses_files_over_the_size_limit(make_tone: Callable[..., Path]) -> None:
    path = make_tone("big.wav", seconds=2.0)
    with pytest.raises(InputTooLarge, match="MB"):
        resolve_input_path(str(path), InputLimits(max_bytes=1000))


def test_refuses_files_over_the_duration_limit(make_tone: Callable[..., Path]) -> None:
    path = make_tone("long.wav", seconds=3.0)
    with pytest.raises(InputTooLarge, match=r"lasts 3\.0 s"):
        read_audio(path, InputLimits(max_duration_s=2.0))


def test_input_roots_follow_symlinks(tmp_path: Path, make_tone: Callable[..., Path]) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = make_tone("outside.wav")
    link = allowed / "link.wav"
    link.symlink_to(outside)
    limits = InputLimits(roots=(allowed.resolve(),))
    with pytest.raises(InputForbidden, match="outside the allowed input directories"):
        resolve_input_path(str(link), limits)
    inside = make_tone("allowed/inside.wav")
    assert resolve_input_path(str(inside), limits) == inside.resolve()


def test_fit_length_cuts_and_pads_with_silence() -> None:
    samples = torch.ones(2, 10)
    assert fit_length(samples, 4).shape == (2, 4)
    padded = fit_length(samples, 15)
    assert padded.shape == (2, 15)
    assert padded[:, 10:].abs().sum() == 0


def test_smooth_join_starts_where_the_source_ends() -> None:
    before = torch.full((1, 100), 0.5)
    after = torch.linspace(-0.2, 0.0, 1000).unsqueeze(0)
    # The model rendered the prompt ending at -0.21, just below its continuation's first sample.
    joined = smooth_join(before, after, torch.tensor([-0.21]), sample_rate=32000)
    assert joined[0, 0].item() == pytest.approx(0.5 + 0.01, abs=1e-6)
    assert torch.equal(joined[:, 200:], after[:, 200:])  # only the first 5 ms are touched


@pytest.mark.parametrize("output_format", ["wav", "flac", "ogg", "mp3"])
def test_write_audio_creates_a_new_complete_file(tmp_path: Path, output_format: str) -> None:
    samples = torch.rand(1, 32000) * 0.2
    path = write_audio(samples, 32000, tmp_path / "out", output_format)
    assert path.is_absolute() and path.suffix == f".{output_format}"
    info = sf.info(str(path))
    assert info.samplerate == 32000 and info.channels == 1
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = sf.SoundFile.write

    def write_then_fail(handle: sf.SoundFile, *args: object, **kwargs: object) -> None:
        real_write(handle, *args, **kwargs)  # the partial file exists on disk...
        raise OSError(28, "No space left on device")  # ...when the disk fills up

    monkeypatch.setattr(sf.SoundFile, "write", write_then_fail)
    out = tmp_path / "out"
    with pytest.raises(OutputFull, match=f"the output directory {out} is full"):
        write_audio(torch.zeros(1, 3200), 32000, out, "wav")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("code", "error"),
    [(28, OutputFull), (122, OutputFull), (13, OutputUnwritable), (30, OutputUnwritable)],
    ids=["no-space", "quota", "permission", "read-only"],
)
def test_a_failed_write_says_what_the_directory_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, error: type[Exception]
) -> None:
    def fail(handle: sf.SoundFile, *args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(sf.SoundFile, "write", fail)
    with pytest.raises(error, match="MUSICGEN_OUTPUT_DIR"):
        write_audio(torch.zeros(1, 3200), 32000, tmp_path / "out", "wav")


def test_written_wav_round_trips(tmp_path: Path) -> None:
    samples = torch.from_numpy(np.sin(np.linspace(0, 100, 32000, dtype=np.float32)) * 0.5).unsqueeze(0)
    path = write_audio(samples, 32000, tmp_path, "wav")
    clip = read_audio(path, LIMITS)
    assert clip.samples.shape == (1, 32000)
    assert torch.allclose(clip.samples, samples, atol=1e-4)


TAGS = FileTags(
    title="MusicGen: café jazz",
    artist="facebook/musicgen-small",
    comment='{"seed": 7}',
    copyright="weights: CC-BY-NC 4.0",
    licence="CC-BY-NC 4.0",
    software="musicgen-bento 0.1.0",
    date="2026-11-22T07:00:00+00:00",
)


@pytest.mark.parametrize(
    ("output_format", "expected"),
    [
        ("wav", {"title", "artist", "comment", "copyright", "software", "date"}),
        ("flac", {"title", "artist", "comment", "copyright", "license", "software", "date"}),
        ("ogg", {"title", "artist", "comment", "copyright", "license", "software", "date"}),
        ("mp3", {"title", "artist", "comment", "date"}),
    ],
)
def test_tags_survive_in_each_format_as_documented(tmp_path: Path, output_format: str, expected: set[str]) -> None:
    path = write_audio(torch.rand(1, 32000) * 0.2, 32000, tmp_path, output_format, TAGS)
    with sf.SoundFile(str(path)) as written:
        metadata = written.copy_metadata()
    assert expected <= set(metadata)
    assert metadata["artist"] == "facebook/musicgen-small"
    assert metadata["comment"] == '{"seed": 7}'
    assert metadata["title"] == ("MusicGen: cafe jazz" if output_format == "mp3" else "MusicGen: café jazz")
    if output_format != "mp3":  # LAME names itself there, when it says anything
        assert metadata["software"].startswith("musicgen-bento 0.1.0")


@pytest.mark.parametrize("channels", [1, 2])
def test_a_streamed_wav_holds_what_write_audio_writes_bit_for_bit(tmp_path: Path, channels: int) -> None:
    samples = torch.randn(channels, 20_000, generator=torch.Generator().manual_seed(channels)) * 0.6
    samples[0, :6] = torch.tensor([1.0, -1.0, 1.7, -1.7, 1e-9, -0.99999])  # full scale, clipped, tiny
    tags = FileTags(title="MusicGen: piano é", artist="model:tag", comment='{"seed": 1}', software="musicgen-bento")
    stream = StreamedWav(tmp_path, 20_000, 32000, channels, tags)
    sent = [stream.header] + [stream.write(samples[:, start : start + 3000]) for start in range(0, 20_000, 3000)]
    path = stream.commit()
    reference = write_audio(samples, 32000, tmp_path, "wav", tags)
    assert path.read_bytes() == b"".join(sent)
    streamed, _ = sf.read(path, dtype="int16")
    written, _ = sf.read(reference, dtype="int16")
    np.testing.assert_array_equal(streamed, written)
    with sf.SoundFile(path) as handle:
        assert (handle.title, handle.artist, handle.software) == ("MusicGen: piano é", "model:tag", "musicgen-bento")


def test_a_streamed_wav_appears_only_when_complete(tmp_path: Path) -> None:
    stream = StreamedWav(tmp_path, 1000, 32000, 1)
    assert list(tmp_path.iterdir()) == []  # nothing on disk before the first samples
    stream.write(torch.zeros(1, 600))
    assert [p.name.startswith(".") for p in tmp_path.iterdir()] == [True]  # a hidden temporary name
    with pytest.raises(ValueError, match="only 600"):
        stream.commit()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="holds 1000 frames"):
        StreamedWav(tmp_path, 1000, 32000, 1).write(torch.zeros(1, 1001))
