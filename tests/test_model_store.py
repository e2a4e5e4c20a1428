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
