"""The model store: importing MusicGen checkpoints into BentoML's store, finding and loading them.

A checkpoint is kept in transformers format (model, generation config, processor and
tokenizer files) as one BentoML model. Hub ids map to store names by replacing '/' with
'--' (`facebook/musicgen-small` -> `facebook--musicgen-small`), so the service can resolve
`--model facebook/musicgen-small` to the entry imported under that id.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import DecoderShape
from ..errors import ModelStoreError
from .tiny import TINY_NAMES, save_tiny_model

logger = logging.getLogger("musicgen_bento")

ProgressCallback = Callable[[str], None]

_MUSICGEN_TYPES = {"musicgen": "text", "musicgen_melody": "melody"}
# Meta's published MusicGen weights are released under CC-BY-NC 4.0 (see the model cards).
_META_LICENCE = "cc-by-nc-4.0"
TINY_LICENCE = "none: random weights generated locally, not a trained model"
_NO_HUB_ADVICE = (
    "Where the hub can't be reached, copy a downloaded checkpoint directory to this machine and run "
    "`musicgen-bento models import /path/to/checkpoint --name NAME`, or use the offline choices: "
    "`musicgen-bento models create-tiny` then `--model musicgen-tiny-random`, or mock mode (`--mock`)."
)


@dataclass(frozen=True)
class ModelInfo:
    """What the store records about a checkpoint."""

    tag: str
    source: str
    kind: str
    sample_rate: int
    channels: int
    licence: str
    path: Path


def store_name(model_ref: str) -> str:
    """The store name of a hub id or store tag: lower case, '/' replaced by '--'."""
    return model_ref.strip().lower().replace("/", "--")


def is_hub_id(model_ref: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", model_ref.strip()))


def _info_from(model: Any) -> ModelInfo:
    meta = model.info.metadata
    return ModelInfo(
        tag=str(model.tag),
        source=str(meta.get("source", "")),
        kind=str(meta.get("kind", "text")),
        sample_rate=int(meta.get("sample_rate", 32000)),
        channels=int(meta.get("channels", 1)),
        licence=str(meta.get("licence", "unknown")),
        path=Path(model.path),
    )


def find(model_ref: str) -> ModelInfo | None:
    """The store entry for a hub id or store tag (`name` or `name:version`), or None."""
    import bentoml
    from bentoml.exceptions import NotFound

    tag = store_name(model_ref) if is_hub_id(model_ref) else model_ref.strip().lower()
    try:
        return _info_from(bentoml.models.get(tag))
    except (NotFound, ValueError):
        return None


def list_models() -> list[ModelInfo]:
    """Every MusicGen checkpoint in the store, newest first."""
    import bentoml

    found = [model for model in bentoml.models.list() if "kind" in model.info.metadata]
    found.sort(key=lambda model: model.info.creation_time, reverse=True)
    return [_info_from(model) for model in found]


def _read_licence(directory: Path, *origins: str) -> str:
    """The licence in the model card's front matter, else Meta's for its checkpoints, else unknown."""
    readme = directory / "README.md"
    if readme.is_file():
        match = re.search(r"^license:\s*(\S+)", readme.read_text(errors="replace"), re.MULTILINE)
        if match:
            return match.group(1)
    if any(origin.lower().startswith("facebook/musicgen") for origin in origins):
        return _META_LICENCE
    return "unknown"


def _describe_checkpoint(directory: Path) -> dict[str, Any]:
    """Checks a transformers MusicGen checkpoint and returns its metadata; raises if it isn't one."""
    from transformers import AutoConfig, AutoProcessor

    if not (directory / "config.json").is_file():
        raise ModelStoreError(f"{directory} has no config.json: it is not a transformers checkpoint directory")
    config = AutoConfig.from_pretrained(directory)
    kind = _MUSICGEN_TYPES.get(config.model_type)
    if kind is None:
        raise ModelStoreError(
            f"{directory} holds a {config.model_type!r} model; only MusicGen and MusicGen-Melody are served"
        )
    try:
        AutoProcessor.from_pretrained(directory)
    except Exception as exc:  # the processor's loaders raise many types; all mean the same here
        raise ModelStoreError(f"{directory} has no usable processor/tokenizer files: {exc}") from None
    return {
        "kind": kind,
        "sample_rate": int(config.audio_encoder.sampling_rate),
        "channels": int(config.decoder.audio_channels),
        "model_type": config.model_type,
    }


def import_directory(directory: Path, name: str, source: str, licence: str | None = None) -> ModelInfo:
    """Copies a checkpoint directory into the store under `name`."""
    import bentoml

    directory = directory.resolve()
    metadata = _describe_checkpoint(directory)
    metadata.update({"source": source, "licence": licence or _read_licence(directory, source, name)})
    labels = {"kind": metadata["kind"], "framework": "transformers"}
    with bentoml.models.create(store_name(name), labels=labels, metadata=metadata) as model:
        for item in directory.iterdir():
            if item.name.startswith(".") or item.name == "__pycache__":
                continue
            target = Path(model.path) / item.name
            if item.is_dir():
                shutil.copytree(item, target)
            else:
                shutil.copy2(item, target)
    logger.info("imported %s into the model store as %s", source, model.tag)
    return _info_from(bentoml.models.get(model.tag))


def download_from_hub(hub_id: str, directory: Path, progress: ProgressCallback | None = None) -> Path:
    """Downloads a checkpoint's transformers files from the Hugging Face hub into `directory`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    reporter = _progress_reporter(hub_id, progress)
    try:
        snapshot_download(
            hub_id,
            local_dir=directory,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "README.md"],
            tqdm_class=reporter,  # type: ignore[arg-type]
        )
    except RepositoryNotFoundError:
        raise ModelStoreError(f"the hub has no model {hub_id!r}; check the id") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelStoreError(
            f"could not download {hub_id!r} from the Hugging Face hub ({first_line}). {_NO_HUB_ADVICE}"
        ) from None
    return directory


def _progress_reporter(hub_id: str, progress: ProgressCallback | None) -> Any:
    """A tqdm class that reports the download's byte progress to `progress`."""
    from tqdm.auto import tqdm

    class Reporter(tqdm):  # type: ignore[misc]
        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if progress is not None and self.total and self.unit == "B":
                progress(f"downloading {hub_id}: {self.n / 1e6:.0f} of {self.total / 1e6:.0f} MB")
            return shown

    return Reporter


def import_model(source: str, name: str | None = None, progress: ProgressCallback | None = None) -> ModelInfo:
    """Imports a hub id or a local checkpoint directory into the store.

    Args:
        source: `owner/name` on the Hugging Face hub, or a local directory in transformers format.
        name: store name; defaults to the hub id with '/' as '--', or the directory's name.
        progress: called with a human-readable progress line while downloading.
    """
    local = Path(source).expanduser()
    if local.is_dir():
        return import_directory(local, name or local.name, source=str(local.resolve()))
    if not is_hub_id(source):
        raise ModelStoreError(f"{source!r} is neither a local checkpoint directory nor a hub id like owner/name")
    with tempfile.TemporaryDirectory(prefix="musicgen-download-") as scratch:
        directory = download_from_hub(source, Path(scratch), progress)
        return import_directory(directory, name or source, source=source)


def create_tiny(kind: str) -> ModelInfo:
    """Builds a tiny random-weight model of `kind` ('text' or 'melody') and stores it."""
    if kind not in TINY_NAMES:
        raise ModelStoreError(f"kind must be one of {', '.join(TINY_NAMES)}; got {kind!r}")
    with tempfile.TemporaryDirectory(prefix="musicgen-tiny-") as scratch:
        directory = save_tiny_model(kind, Path(scratch))  # type: ignore[arg-type]
        return import_directory(
            directory, TINY_NAMES[kind], source=f"generated: tiny {kind} model, random weights", licence=TINY_LICENCE
        )


def resolve(model_ref: str, allow_download: bool, progress: ProgressCallback | None = None) -> ModelInfo:
    """The store entry to serve for `model_ref`, importing a hub id on first use when allowed."""
    found = find(model_ref)
    if found is not None:
        return found

    tiny_kinds = {name: kind for kind, name in TINY_NAMES.items()}
    if model_ref.strip().lower() in tiny_kinds:
        # The offline test models are built in code, so asking for one is enough to make it.
        if progress is not None:
            progress(f"building {model_ref} (random weights) in the model store")
        return create_tiny(tiny_kinds[model_ref.strip().lower()])
    if not is_hub_id(model_ref):
        raise ModelStoreError(
            f"no model {model_ref!r} in the store; `musicgen-bento models list` shows what is there, "
            "`musicgen-bento models create-tiny` makes the offline test models"
        )
    if not allow_download:
        raise ModelStoreError(
            f"{model_ref!r} is not in the store and downloads are off (MUSICGEN_ALLOW_DOWNLOAD=0); "
            f"import it first with `musicgen-bento models import {model_ref}`"
        )
    return import_model(model_ref, progress=progress)


def decoder_shape(info: ModelInfo) -> DecoderShape:
    """The decoder's dimensions from the checkpoint's config.json and its parameter count from
    its safetensors headers."""
    try:
        config = json.loads((info.path / "config.json").read_text())
        decoder, codec = config["decoder"], config["audio_encoder"]
        sample_rate = int(codec["sampling_rate"])
        return DecoderShape(
            hidden=int(decoder["hidden_size"]),
            ffn=int(decoder["ffn_dim"]),
            layers=int(decoder["num_hidden_layers"]),
            heads=int(decoder["num_attention_heads"]),
            codebooks=int(decoder["num_codebooks"]),
            vocab=int(decoder["vocab_size"]),
            parameters=_checkpoint_parameters(info.path),
            sample_rate=sample_rate,
            frame_rate=sample_rate / math.prod(codec["upsampling_ratios"]),
            melody_prefix=int(config.get("chroma_length", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelStoreError(f"{info.tag}: unreadable checkpoint config in {info.path}: {error}") from error


def _checkpoint_parameters(directory: Path) -> int:
    """Parameters of a checkpoint: exact from safetensors headers; for a checkpoint saved in
    PyTorch's own format, its files' size over 4 bytes (they store float32)."""
    safetensors = sorted(directory.glob("*.safetensors"))
    if safetensors:
        return sum(_safetensors_parameters(path) for path in safetensors)
    pickled = sorted(directory.glob("pytorch_model*.bin"))
    if pickled:
        return sum(path.stat().st_size for path in pickled) // 4
    raise ValueError("no weights file (*.safetensors or pytorch_model*.bin)")


def _safetensors_parameters(path: Path) -> int:
    """Parameters in one safetensors file, from its header (an 8-byte length, then JSON)."""
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(length))
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")


def load(info: ModelInfo, device: str, dtype: Any) -> tuple[Any, Any]:
    """Loads a stored checkpoint's model (on `device`, in `dtype`) and processor."""
    from transformers import AutoProcessor, MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

    model_class: Any = (
        MusicgenMelodyForConditionalGeneration if info.kind == "melody" else MusicgenForConditionalGeneration
    )
    model = model_class.from_pretrained(info.path, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(info.path)
    return model, processor
