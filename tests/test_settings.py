"""Settings are read once from environment variables, with clear errors for bad values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from musicgen_bento.settings import Settings, SettingsError, exposure_risks, setting_specs


def test_defaults_serve_musicgen_small_on_gpu_zero() -> None:
    settings = Settings.from_env({})
    assert settings.model == "facebook/musicgen-small"
    assert settings.gpu_id == 0
    assert settings.mock is False
    assert settings.max_duration_s == 30.0
    assert settings.output_dir.is_absolute()


def test_variables_override_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "MUSICGEN_MODEL": "facebook/musicgen-melody",
            "MUSICGEN_GPU_ID": "3",
            "CF_MUSICGEN_MOCK": "1",
            "MUSICGEN_OUTPUT_DIR": str(tmp_path),
            "MUSICGEN_INPUT_ROOTS": f"{tmp_path}/a{os.pathsep}{tmp_path}/b",
            "MUSICGEN_MAX_DURATION_S": "60",
        }
    )
    assert settings.model == "facebook/musicgen-melody"
    assert settings.gpu_id == 3
    assert settings.mock is True
    assert settings.output_dir == tmp_path.resolve()
    assert settings.input_roots == ((tmp_path / "a").resolve(), (tmp_path / "b").resolve())
    assert settings.max_duration_s == 60.0


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MUSICGEN_GPU_ID", "first", "MUSICGEN_GPU_ID"),
        ("CF_MUSICGEN_MOCK", "maybe", "CF_MUSICGEN_MOCK"),
        ("MUSICGEN_DTYPE", "int8", "MUSICGEN_DTYPE"),
        ("MUSICGEN_MAX_DURATION_S", "0", "MUSICGEN_MAX_DURATION_S"),
        ("MUSICGEN_EXTEND_STRIDE_S", "40", "MUSICGEN_EXTEND_STRIDE_S"),
        ("MUSICGEN_WARMUP_S", "-1", "MUSICGEN_WARMUP_S"),
    ],
    ids=["gpu-not-int", "mock-not-bool", "unknown-dtype", "zero-max-duration", "stride-over-window", "negative-warmup"],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({variable: value})


def test_int8_needs_the_static_engine() -> None:
    with pytest.raises(SettingsError, match="MUSICGEN_QUANTIZE=int8 needs MUSICGEN_ENGINE=static"):
        Settings.from_env({"MUSICGEN_QUANTIZE": "int8", "MUSICGEN_ENGINE": "transformers"})
    assert Settings.from_env({"MUSICGEN_QUANTIZE": "int8"}).quantize == "int8"
    with pytest.raises(SettingsError, match="MUSICGEN_QUANTIZE"):
        Settings.from_env({"MUSICGEN_QUANTIZE": "int4"})


def test_every_setting_has_a_variable_and_help() -> None:
    for spec in setting_specs():
        assert spec["env"].startswith(("MUSICGEN_", "CF_MUSICGEN_"))
        assert spec["help"]


def test_a_given_mapping_is_read_instead_of_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSICGEN_PORT", "4000")
    assert Settings.from_env({}).port == 3000
    assert Settings.from_env().port == 4000


def test_an_empty_variable_means_the_default() -> None:
    settings = Settings.from_env({"MUSICGEN_MAX_DURATION_S": "", "MUSICGEN_INPUT_ROOTS": ""})
    assert (settings.max_duration_s, settings.input_roots) == (30.0, ())


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MUSICGEN_BATCH_SLOTS", "0"), ("MUSICGEN_ENGINE", "vllm"), ("MUSICGEN_PORT", "70000")],
    ids=["no-slots", "unknown-engine", "port-out-of-range"],
)
def test_bounds_are_declared_with_the_setting(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"{variable}: .*got '{value}'"):
        Settings.from_env({variable: value})


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]


def test_a_server_listening_beyond_loopback_without_keys_warns_naming_the_settings(tmp_path: Path) -> None:
    open_server = Settings.from_env({"MUSICGEN_INPUT_ROOTS": str(tmp_path)})
    [warning] = exposure_risks(open_server, "0.0.0.0")
    for setting in ("MUSICGEN_API_KEYS_FILE", "MUSICGEN_ALLOWED_HOSTS", "MUSICGEN_CORS_ORIGINS"):
        assert setting in warning
    assert exposure_risks(open_server, "127.0.0.1") == exposure_risks(open_server, "::1") == []
    keyed = Settings.from_env({"MUSICGEN_INPUT_ROOTS": str(tmp_path), "MUSICGEN_API_KEYS_FILE": str(tmp_path / "k")})
    assert exposure_risks(keyed, "0.0.0.0") == []


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("MUSICGEN_CORS_ORIGINS", "studio.example", "must be an origin"),
        ("MUSICGEN_CORS_ORIGINS", "https://studio.example/path", "must be an origin"),
        ("MUSICGEN_KEY_MAX_RUNNING", "-1", "greater than or equal to 0"),
        ("MUSICGEN_KEY_AUDIO_S_PER_HOUR", "lots", "valid number"),
    ],
    ids=["no-scheme", "a-path", "negative-limit", "not-a-number"],
)
def test_bad_access_settings_name_the_variable(variable: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: value})
    assert variable in str(refused.value) and says in str(refused.value)
