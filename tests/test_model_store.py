"""The model store: tiny models, importing local checkpoints, resolving hub ids, listing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from musicgen_bento.errors import ModelStoreError
from musicgen_bento.models.store import find, import_model, is_hub_id, list_models, resolve, store_name
from musicgen_bento.models.tiny import save_tiny_model

from .conftest import BIN


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("facebook/musicgen-small", "facebook--musicgen-small"),
        ("Facebook/MusicGen-Melody", "facebook--musicgen-melody"),
    ],
    ids=["hub-id", "mixed-case"],
)
def test_hub_ids_map_to_store_names(ref: str, expected: str) -> None:
    assert is_hub_id(ref)
    assert store_name(ref) == expected


def test_tiny_models_record_what_they_are(tiny_models: dict[str, str]) -> None:
    text = find(tiny_models["text"])
    melody = find(tiny_models["melody"])
    assert text is not None and melody is not None
    assert (text.kind, melody.kind) == ("text", "melody")
    assert text.sample_rate == melody.sample_rate == 32000
    assert text.channels == 1
    assert "random weights" in text.licence
    assert "random weights" in text.source
    assert (text.path / "config.json").is_file()
    assert {info.tag.split(":")[0] for info in list_models()} >= set(tiny_models.values())


def test_local_checkpoint_imports_under_a_name_and_resolves_by_it(tmp_path: Path) -> None:
    checkpoint = save_tiny_model("text", tmp_path / "my-checkpoint")
    (checkpoint / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# a model card\n")
    info = import_model(str(checkpoint), name="studio-musicgen")
    assert info.tag.startswith("studio-musicgen:")
    assert info.licence == "cc-by-nc-4.0"
    assert resolve("studio-musicgen", allow_download=False).tag == info.tag


def test_imported_hub_id_resolves_without_downloading(tmp_path: Path) -> None:
    checkpoint = save_tiny_model("melody", tmp_path / "melody")
    import_model(str(checkpoint), name="facebook/musicgen-melody")
    info = resolve("facebook/musicgen-melody", allow_download=False)
    assert info.tag.startswith("facebook--musicgen-melody:")
    assert info.kind == "melody"
    assert info.licence == "cc-by-nc-4.0"  # Meta's licence, recorded for facebook/musicgen-* sources


def test_a_directory_that_is_not_musicgen_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelStoreError, match="only MusicGen"):
        import_model(str(tmp_path))


def test_unknown_store_tag_says_how_to_find_models() -> None:
    with pytest.raises(ModelStoreError, match="models list"):
        resolve("no-such-model", allow_download=True)


def test_missing_hub_model_with_downloads_off_says_how_to_import() -> None:
    with pytest.raises(ModelStoreError, match="models import facebook/musicgen-large"):
        resolve("facebook/musicgen-large", allow_download=False)


def test_importing_from_an_unreachable_hub_points_to_the_local_directory_form(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(BIN / "musicgen-bento"), "models", "import", "facebook/musicgen-small"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "could not download 'facebook/musicgen-small'" in done.stderr
    assert "musicgen-bento models import /path/to/checkpoint" in done.stderr
    assert "Traceback" not in done.stderr


def test_models_list_shows_the_tiny_models(tiny_models: dict[str, str]) -> None:
    done = subprocess.run([str(BIN / "musicgen-bento"), "models", "list"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert tiny_models["text"] in done.stdout and tiny_models["melody"] in done.stdout


def test_the_decoder_shape_and_parameters_come_from_the_checkpoint_files(tiny_models: dict[str, str]) -> None:
    import torch

    from musicgen_bento.models.store import decoder_shape, find, load

    melody = find(tiny_models["melody"])
    text = find(tiny_models["text"])
    assert melody is not None and text is not None
    model, _processor = load(text, "cpu", torch.float32)
    shape = decoder_shape(text)
    # The files hold every saved tensor: at least the model's distinct parameters, at most its
    # whole state (tied weights may be stored twice; some buffers are not stored), so the memory
    # plan never counts fewer weights than the model's distinct parameters.
    distinct = sum(p.numel() for p in model.parameters())
    state = sum(t.numel() for t in model.state_dict().values())
    assert distinct <= shape.parameters <= state
    config = model.config.decoder
    assert (shape.hidden, shape.ffn, shape.layers) == (config.hidden_size, config.ffn_dim, config.num_hidden_layers)
    assert (shape.frame_rate, shape.melody_prefix) == (50.0, 0)
    assert decoder_shape(melody).melody_prefix == 235
