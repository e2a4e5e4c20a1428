"""The service's configuration: one typed object read once from environment variables.

Command-line flags meet environment variables here: every setting names its variable and
its flag, the command line turns flags into variables for the server process, and the
server reads the variables once into `Settings`. Nothing else in the package reads
`os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected one of 1/0, true/false, yes/no, on/off; got {raw!r}")


def _parse_paths(raw: str) -> tuple[Path, ...]:
    return tuple(Path(part).expanduser().resolve() for part in raw.split(os.pathsep) if part.strip())


def _setting(
    default: Any,
    env: str,
    flag: str | None,
    help: str,
    parse: Any = None,
) -> Any:
    """Declares one setting: its default, variable, command-line flag and help text."""
    return field(default=default, metadata={"env": env, "flag": flag, "help": help, "parse": parse})


class SettingsError(ValueError):
    """A setting's variable or flag holds a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. Defaults suit a single-GPU node."""

    model: str = _setting(
        "facebook/musicgen-small",
        "MUSICGEN_MODEL",
        "--model",
        "Hub id (imported into the model store on first use) or model-store tag to serve.",
    )
    gpu_id: int = _setting(0, "MUSICGEN_GPU_ID", "--gpu-id", "CUDA device index; CPU is used when CUDA is absent.")
    host: str = _setting("0.0.0.0", "MUSICGEN_HOST", "--host", "Address the HTTP server listens on.")
    port: int = _setting(3000, "MUSICGEN_PORT", "--port", "Port the HTTP server listens on.")
    mock: bool = _setting(
        False,
        "CF_MUSICGEN_MOCK",
        "--mock",
        "Load no model; /continue returns the source cut or padded to the requested length.",
        _parse_bool,
    )
    output_dir: Path = _setting(
        Path("output"),
        "MUSICGEN_OUTPUT_DIR",
        "--output-dir",
        "Directory that generated files are written to (created if missing).",
    )
    input_roots: tuple[Path, ...] = _setting(
        (),
        "MUSICGEN_INPUT_ROOTS",
        "--input-roots",
        f"'{os.pathsep}'-separated directories that source files must lie in (symlinks followed); empty allows any.",
        _parse_paths,
    )
    max_input_mb: float = _setting(
        200.0, "MUSICGEN_MAX_INPUT_MB", "--max-input-mb", "Largest accepted source file, in MB."
    )
    max_input_s: float = _setting(
        1200.0, "MUSICGEN_MAX_INPUT_S", "--max-input-s", "Longest accepted source file, in seconds."
    )
    max_duration_s: float = _setting(
        30.0, "MUSICGEN_MAX_DURATION_S", "--max-duration-s", "Most seconds of new music one request may ask for."
    )
    window_s: float = _setting(
        30.0,
        "MUSICGEN_WINDOW_S",
        "--window-s",
        "Longest stretch (prompt + new music) the model generates at once; longer requests use overlapping windows.",
    )
    extend_stride_s: float = _setting(
        18.0,
        "MUSICGEN_EXTEND_STRIDE_S",
        "--extend-stride-s",
        "Seconds of new music each further window adds; the rest of the window is its prompt.",
    )
    dtype: str = _setting(
        "auto",
        "MUSICGEN_DTYPE",
        "--dtype",
        "Weights' precision: auto (float16 on CUDA, float32 on CPU), float32, float16 or bfloat16.",
    )
    allow_download: bool = _setting(
        True,
        "MUSICGEN_ALLOW_DOWNLOAD",
        "--allow-download",
        "Import a hub model missing from the store at start-up (needs the hub to be reachable).",
        _parse_bool,
    )
    warmup_s: float = _setting(
        1.0,
        "MUSICGEN_WARMUP_S",
        "--warmup-s",
        "Seconds of audio generated once at start-up so the first request pays no warm-up cost; 0 skips it.",
    )
    data_dir: Path = _setting(
        Path("data"),
        "MUSICGEN_DATA_DIR",
        "--data-dir",
        "Directory of the embedded job queue's database (SQLite), used when no Redis URL is set.",
    )
    redis_url: str = _setting(
        "",
        "MUSICGEN_REDIS_URL",
        "--redis-url",
        "Redis URL (redis://host:6379/0) of a job queue shared by several replicas; empty uses the embedded queue.",
    )
    redis_prefix: str = _setting(
        "musicgen", "MUSICGEN_REDIS_PREFIX", "--redis-prefix", "Prefix of every Redis key this service uses."
    )
    job_ttl_s: float = _setting(
        86400.0,
        "MUSICGEN_JOB_TTL_S",
        "--job-ttl-s",
        "Seconds a finished job, its result and its audio are kept.",
    )
    max_queue: int = _setting(
        100, "MUSICGEN_MAX_QUEUE", "--max-queue", "Most jobs waiting in the queue; past it POST /generate answers 503."
    )
    max_job_duration_s: float = _setting(
        120.0,
        "MUSICGEN_MAX_JOB_DURATION_S",
        "--max-job-duration-s",
        "Most seconds of music one job may ask for (longer than the window uses overlapping windows).",
    )
    visibility_timeout_s: float = _setting(
        60.0,
        "MUSICGEN_VISIBILITY_TIMEOUT_S",
        "--visibility-timeout-s",
        "Redis queue: seconds without a heartbeat after which another replica takes over a running job.",
    )
    shutdown_grace_s: float = _setting(
        10.0,
        "MUSICGEN_SHUTDOWN_GRACE_S",
        "--shutdown-grace-s",
        "On stop, seconds a running job may take to finish; then it is interrupted and queued again at the front.",
    )
    engine: str = _setting(
        "static",
        "MUSICGEN_ENGINE",
        "--engine",
        "Decoding loop: static (static KV cache, step-level batching of concurrent requests, CUDA graphs on GPUs) "
        "or transformers (its generate(), one request at a time).",
    )
    batch_slots: int = _setting(
        8,
        "MUSICGEN_BATCH_SLOTS",
        "--batch-slots",
        "Static engine: most requests (/continue calls and jobs together) decoded together; more wait in arrival "
        "order. A replica runs up to this many jobs at once. Each slot takes two rows of KV cache.",
    )

    def __post_init__(self) -> None:
        # Relative output directories are anchored where the process starts, once.
        object.__setattr__(self, "output_dir", Path(self.output_dir).expanduser().resolve())
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        if self.dtype not in {"auto", "float32", "float16", "bfloat16"}:
            raise SettingsError(f"MUSICGEN_DTYPE: expected auto, float32, float16 or bfloat16; got {self.dtype!r}")
        for name in (
            "max_input_mb",
            "max_input_s",
            "max_duration_s",
            "window_s",
            "extend_stride_s",
            "job_ttl_s",
            "max_queue",
            "max_job_duration_s",
            "visibility_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{_env_of(name)}: must be greater than 0; got {getattr(self, name)}")
        if self.extend_stride_s >= self.window_s:
            raise SettingsError(
                f"MUSICGEN_EXTEND_STRIDE_S ({self.extend_stride_s}) must be shorter than "
                f"MUSICGEN_WINDOW_S ({self.window_s}): each window needs room for its prompt"
            )
        if self.shutdown_grace_s < 0:
            raise SettingsError(f"MUSICGEN_SHUTDOWN_GRACE_S: must be 0 or more; got {self.shutdown_grace_s}")
        if self.warmup_s < 0:
            raise SettingsError(f"MUSICGEN_WARMUP_S: must be 0 or more; got {self.warmup_s}")
        if self.engine not in {"static", "transformers"}:
            raise SettingsError(f"MUSICGEN_ENGINE: expected static or transformers; got {self.engine!r}")
        if self.batch_slots < 1:
            raise SettingsError(f"MUSICGEN_BATCH_SLOTS: must be at least 1; got {self.batch_slots}")

    def risks(self) -> list[str]:
        """Warnings about how this configuration exposes the server, for the start-up log."""
        risks = []
        if not self.input_roots:
            risks.append(
                "MUSICGEN_INPUT_ROOTS is empty: a request may use any audio file this process can read as its "
                "source, and with include_source copy it into the output directory. On a server that clients "
                "share, set it to the directories their files are in (README: Deploying, a hardened configuration)"
            )
        return risks

    @property
    def max_prompt_s(self) -> float:
        """Longest audio prompt: a window must keep room for at least one second of new music."""
        return self.window_s - 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads every setting from `environ` (the process environment by default)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(spec.metadata["env"])
            if raw is None:
                continue
            try:
                values[spec.name] = _convert(spec.type, spec.metadata["parse"], raw)
            except ValueError as exc:
                raise SettingsError(f"{spec.metadata['env']}: {exc}") from None
        return cls(**values)


def _env_of(name: str) -> str:
    return next(spec.metadata["env"] for spec in fields(Settings) if spec.name == name)


def _convert(type_name: Any, parse: Any, raw: str) -> Any:
    if parse is not None:
        return parse(raw)
    kind = str(type_name)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "Path":
        return Path(raw)
    return raw


def setting_specs() -> list[dict[str, Any]]:
    """Name, variable, flag, default and help of every setting: for the command line and the docs."""
    return [
        {
            "name": spec.name,
            "env": spec.metadata["env"],
            "flag": spec.metadata["flag"],
            "help": spec.metadata["help"],
            "default": spec.default,
            "is_bool": spec.metadata["parse"] is _parse_bool,
        }
        for spec in fields(Settings)
    ]
