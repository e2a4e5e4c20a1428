"""The service's configuration: one typed object read once from environment variables.

Each setting is declared once, below: its type, default, bounds, variable (`MUSICGEN_` and its
name), command-line flag and help. pydantic-settings reads and checks the variables; the command
line turns flags into the same variables for the server process. Nothing else in the package
reads `os.environ`.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.json_schema import JsonDict
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

ENV_PREFIX = "MUSICGEN_"
# The variables `Settings.from_env` reads while it builds an object (None: the process environment).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("musicgen_settings_environ", default=None)


class SettingsError(ValueError):
    """A setting's variable or flag holds a value that cannot be used."""


def _setting(default: Any, flag: str, help: str, env: str | None = None, **bounds: Any) -> Any:
    """Declares one setting: its default, command-line flag, help text and bounds (`gt`, `ge`, ...);
    its variable is `MUSICGEN_<NAME>` unless `env` names another."""
    extra: JsonDict = {"flag": flag}
    if env is not None:
        return Field(default, description=help, validation_alias=AliasChoices(env), json_schema_extra=extra, **bounds)
    return Field(default, description=help, json_schema_extra=extra, **bounds)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class Settings(BaseSettings):
    """Every knob of the service. Defaults suit a single-GPU node."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        frozen=True,
        extra="ignore",
        env_ignore_empty=True,
        populate_by_name=True,
    )

    model: str = _setting(
        "facebook/musicgen-small",
        "--model",
        "Hub id (imported into the model store on first use) or model-store tag to serve.",
    )
    gpu_id: int = _setting(0, "--gpu-id", "CUDA device index; CPU is used when CUDA is absent.", ge=0)
    host: str = _setting("0.0.0.0", "--host", "Address the HTTP server listens on.")
    port: int = _setting(3000, "--port", "Port the HTTP server listens on.", ge=0, le=65535)
    mock: bool = _setting(
        False,
        "--mock",
        "Load no model; /continue returns the source cut or padded to the requested length.",
        env="CF_MUSICGEN_MOCK",
    )
    output_dir: Path = _setting(
        Path("output"), "--output-dir", "Directory that generated files are written to (created if missing)."
    )
    input_roots: Annotated[tuple[Path, ...], NoDecode] = _setting(
        (),
        "--input-roots",
        f"'{os.pathsep}'-separated directories that source files must lie in (symlinks followed); empty allows any.",
    )
    upload_dir: Path = _setting(
        Path("uploads"),
        "--upload-dir",
        "Directory POST /uploads keeps clients' audio files in (created if missing); always readable by requests.",
    )
    upload_ttl_s: float = _setting(
        86400.0, "--upload-ttl-s", "Seconds an uploaded file is kept before it is deleted.", gt=0
    )
    max_input_mb: float = _setting(200.0, "--max-input-mb", "Largest accepted source file (and upload), in MB.", gt=0)
    max_input_s: float = _setting(1200.0, "--max-input-s", "Longest accepted source file, in seconds.", gt=0)
    max_duration_s: float = _setting(
        30.0, "--max-duration-s", "Most seconds of new music one request may ask for.", gt=0
    )
    window_s: float = _setting(
        30.0,
        "--window-s",
        "Longest stretch (prompt + new music) the model generates at once; longer requests use overlapping windows.",
        gt=1,
    )
    extend_stride_s: float = _setting(
        18.0,
        "--extend-stride-s",
        "Seconds of new music each further window adds; the rest of the window is its prompt.",
        gt=0,
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = _setting(
        "auto",
        "--dtype",
        "Weights' precision: auto (on CUDA bfloat16 from compute capability 8.0, float16 before; on a CPU "
        "bfloat16 where its arithmetic measures faster at start-up, else float32), float32, float16 or bfloat16.",
    )
    quantize: Literal["none", "int8"] = _setting(
        "none",
        "--quantize",
        "Static engine on CPUs: none, or int8 (the decoder's linear weights quantized to int8, one scale per output "
        "channel: a quarter of float32's bytes to read per step; changes the tokens about as bfloat16 does).",
    )
    allow_download: bool = _setting(
        True,
        "--allow-download",
        "Import a hub model missing from the store at start-up (needs the hub to be reachable).",
    )
    metadata_prompt: bool = _setting(
        True,
        "--metadata-prompt",
        "Write the text prompt into output files' metadata and provenance; off keeps prompts out of the files.",
    )
    warmup_s: float = _setting(
        1.0,
        "--warmup-s",
        "Seconds of audio generated once at start-up so the first request pays no warm-up cost; 0 skips it.",
        ge=0,
    )
    data_dir: Path = _setting(
        Path("data"),
        "--data-dir",
        "Directory of the embedded job queue's database (SQLite), used when no Redis URL is set.",
    )
    redis_url: str = _setting(
        "",
        "--redis-url",
        "Redis URL (redis://host:6379/0) of a job queue shared by several replicas; empty uses the embedded queue.",
    )
    redis_prefix: str = _setting("musicgen", "--redis-prefix", "Prefix of every Redis key this service uses.")
    job_ttl_s: float = _setting(
        86400.0, "--job-ttl-s", "Seconds a finished job, its result and its audio are kept.", gt=0
    )
    max_queue: int = _setting(
        100, "--max-queue", "Most jobs waiting in the queue; past it POST /generate answers 503.", gt=0
    )
    max_job_duration_s: float = _setting(
        120.0,
        "--max-job-duration-s",
        "Most seconds of music one job may ask for (longer than the window uses overlapping windows).",
        gt=0,
    )
    visibility_timeout_s: float = _setting(
        60.0,
        "--visibility-timeout-s",
        "Redis queue: seconds without a heartbeat after which another replica takes over a running job.",
        gt=0,
    )
    shutdown_grace_s: float = _setting(
        10.0,
        "--shutdown-grace-s",
        "On stop, seconds a running job may take to finish; then it is interrupted and queued again at the front.",
        ge=0,
    )
    engine: Literal["static", "transformers"] = _setting(
        "static",
        "--engine",
        "Decoding loop: static (static KV cache, step-level batching of concurrent requests, CUDA graphs on GPUs) "
        "or transformers (its generate(), one request at a time).",
    )
    max_memory_mb: int = _setting(
        0,
        "--max-memory-mb",
        "Memory this service may use, in MiB: the GPU's on CUDA, host memory on CPUs. The static engine fits its "
        "slots (at most MUSICGEN_BATCH_SLOTS) and their KV cache into it beside the weights and an activation margin, "
        "and the service refuses to start when not even one slot fits. 0: what the device has free at start-up.",
        ge=0,
    )
    batch_slots: int = _setting(
        8,
        "--batch-slots",
        "Static engine: most requests (/continue calls and jobs together) decoded together; more wait in arrival "
        "order. A replica runs up to this many jobs at once. Each slot takes two rows of KV cache.",
        ge=1,
    )

    api_keys_file: Path | None = _setting(
        None,
        "--api-keys-file",
        "File of API keys (musicgen-bento keys add NAME); set, every route but GET /health (and /metrics unless "
        "MUSICGEN_PROTECT_METRICS) needs 'Authorization: Bearer <key>'. Re-read when it changes.",
    )
    protect_metrics: bool = _setting(
        False, "--protect-metrics", "With API keys: /metrics needs a key too (Prometheus then sends one)."
    )
    key_max_running: int = _setting(
        0,
        "--key-max-running",
        "Generations one API key may have running at once, unless its own says; 0: no limit.",
        ge=0,
    )
    key_max_queued: int = _setting(
        0, "--key-max-queued", "Jobs one API key may have queued, unless its own says; 0: no limit.", ge=0
    )
    key_audio_s_per_hour: float = _setting(
        0.0,
        "--key-audio-s-per-hour",
        "Seconds of audio one API key may ask for in any hour (takes counted each), unless its own says; 0: no limit.",
        ge=0,
    )
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = _setting(
        (),
        "--allowed-hosts",
        "Comma-separated host names this server answers to besides IP addresses, localhost and its own hostname "
        "('*.example.com' for a domain's names); any other Host header is refused (DNS rebinding).",
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = _setting(
        (),
        "--cors-origins",
        "Comma-separated origins (https://studio.example) whose pages may call this server from a browser; a "
        "request from any other page's origin is refused with 403.",
    )

    webhook_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = _setting(
        (),
        "--webhook-allowed-hosts",
        "Comma-separated hosts a job's webhook_url may name ('*.example.com' for a domain's names; an address "
        "as written); empty: webhooks are refused.",
    )
    webhook_secret: SecretStr = _setting(
        SecretStr(""),
        "--webhook-secret",
        "The Standard Webhooks signing secret (whsec_ and base64, 24 to 64 bytes) that signs every delivery; "
        "needed with MUSICGEN_WEBHOOK_ALLOWED_HOSTS. Prefer the variable to the flag, which ps shows.",
    )
    webhook_timeout_s: float = _setting(
        5.0, "--webhook-timeout-s", "Seconds a webhook delivery may take before it counts as failed.", gt=0, le=60
    )
    webhook_retry_s: float = _setting(
        86400.0,
        "--webhook-retry-s",
        "Seconds a failing webhook delivery is retried for, with exponential backoff, before it is given up.",
        gt=0,
    )

    @field_validator("allowed_hosts", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip().lower().rstrip(".") for part in value.split(",") if part.strip())
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        return _origins(value)

    @field_validator("input_roots", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(Path(part).expanduser().resolve() for part in value.split(os.pathsep) if part.strip())
        return value

    @field_validator("output_dir", "data_dir", "upload_dir", "api_keys_file")
    @classmethod
    def _anchor(cls, value: Path | None) -> Path | None:
        # Relative paths are anchored where the process starts, once.
        return None if value is None else value.expanduser().resolve()

    @model_validator(mode="after")
    def _quantize_needs_the_static_engine(self) -> Settings:
        if self.quantize != "none" and self.engine != "static":
            raise ValueError(
                f"MUSICGEN_QUANTIZE={self.quantize} needs MUSICGEN_ENGINE=static (the engine that quantizes the "
                f"decoder); MUSICGEN_ENGINE is {self.engine}"
            )
        return self

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> Settings:
        # Checked here, not in a field validator: a refusal must not echo the secret.
        _check_webhook_secret(self.webhook_secret.get_secret_value(), self.webhook_allowed_hosts)
        return self

    @model_validator(mode="after")
    def _windows_leave_room(self) -> Settings:
        if self.extend_stride_s >= self.window_s:
            raise ValueError(
                f"MUSICGEN_EXTEND_STRIDE_S ({self.extend_stride_s:g}) must be shorter than MUSICGEN_WINDOW_S "
                f"({self.window_s:g}): each window needs room for its prompt"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment only (or the mapping `from_env` was given): no .env file or secrets
        # directory changes a server behind its operator's back.
        environ = _ENVIRON.get()
        return init_settings, _MappingSource(settings_cls, os.environ if environ is None else environ)

    @property
    def source_roots(self) -> tuple[Path, ...]:
        """Where requests may read files from: the input roots and the upload directory (empty: anywhere)."""
        return (*self.input_roots, self.upload_dir) if self.input_roots else ()

    @property
    def max_prompt_s(self) -> float:
        """Longest audio prompt: a window must keep room for at least one second of new music."""
        return self.window_s - 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Reads every setting from `environ` (the process environment by default).

        Raises `SettingsError` naming the variable of each bad value.
        """
        token = _ENVIRON.set(environ)
        try:
            return cls()
        except ValidationError as error:
            raise SettingsError(_describe(error)) from None
        finally:
            _ENVIRON.reset(token)


def exposure_risks(settings: Settings, listening_on: str | None = None) -> list[str]:
    """Warnings about how a configuration exposes the server, for the start-up log; `listening_on`
    is the address the server is bound to, where known (else MUSICGEN_HOST)."""
    risks = []
    host = listening_on or settings.host
    if settings.api_keys_file is None and not _is_loopback(host):
        risks.append(
            f"the server listens on {host}, beyond this machine, and MUSICGEN_API_KEYS_FILE is not set: "
            "anyone who can reach the port can use it. Set MUSICGEN_API_KEYS_FILE (musicgen-bento keys add NAME), "
            "and MUSICGEN_ALLOWED_HOSTS and MUSICGEN_CORS_ORIGINS for the names and pages that reach it "
            "(docs/deploying.md: a hardened configuration)"
        )
    if not settings.input_roots:
        risks.append(
            "MUSICGEN_INPUT_ROOTS is empty: a request may use any audio file this process can read as its "
            "source, and with include_source copy it into the output directory. On a server that clients "
            "share, set it to the directories their files are in (docs/deploying.md: a hardened configuration)"
        )
    return risks


def _origins(value: Any) -> Any:
    """MUSICGEN_CORS_ORIGINS, split and checked: each an origin (scheme, host and port), or '*'."""
    if isinstance(value, str):
        value = tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
    for origin in value:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s?#]+", origin):
            raise ValueError(
                f"each must be an origin (scheme, host, port) such as https://studio.example:8443; {origin!r} is not"
            )
    return value


def _check_webhook_secret(secret: str, allowed_hosts: tuple[str, ...]) -> None:
    """Webhooks need a Standard Webhooks secret: whsec_ and the base64 of 24 to 64 bytes."""
    if allowed_hosts and not secret:
        raise ValueError(
            "MUSICGEN_WEBHOOK_ALLOWED_HOSTS is set but MUSICGEN_WEBHOOK_SECRET is not: every delivery is signed; "
            "set a secret (whsec_ and base64 of 24 to 64 random bytes)"
        )
    if secret:
        raw = secret.removeprefix("whsec_")
        try:
            length = len(base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True))
        except ValueError:
            length = 0
        if not 24 <= length <= 64:
            raise ValueError("MUSICGEN_WEBHOOK_SECRET must be whsec_ and the base64 of 24 to 64 random bytes")


class _MappingSource(EnvSettingsSource):
    """The settings' variables read from a given mapping instead of the process environment."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def _describe(error: ValidationError) -> str:
    """One sentence per bad value, each naming its variable."""
    parts = []
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else ""
        env = _ENV_OF.get(name, name)
        message = problem["msg"].removeprefix("Value error, ")
        parts.append(f"{env}: {message}; got {problem['input']!r}" if env else message)
    return "; ".join(parts)


def _env_name(name: str, field: Any) -> str:
    alias = field.validation_alias
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"{ENV_PREFIX}{name.upper()}"


_ENV_OF = {name: _env_name(name, field) for name, field in Settings.model_fields.items()}


def setting_specs() -> list[dict[str, Any]]:
    """Name, variable, flag, default and help of every setting: for the command line and the docs."""
    return [
        {
            "name": name,
            "env": _ENV_OF[name],
            "flag": (field.json_schema_extra or {}).get("flag"),  # type: ignore[union-attr]
            "help": field.description,
            "default": field.default,
            "is_bool": field.annotation is bool,
        }
        for name, field in Settings.model_fields.items()
    ]


def _shown_default(default: Any) -> str:
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    if default in ("", ()):
        return "empty"
    if isinstance(default, Path):
        return f"`./{default}`"
    if isinstance(default, SecretStr):
        return "empty" if not default.get_secret_value() else "(secret)"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    return f"`{default}`"


def settings_table() -> str:
    """Every setting as a Markdown table (variable, flag, default, meaning): the settings page's
    table is this one, so that it cannot drift from the declarations."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for spec in setting_specs():
        flag = f"`{spec['flag']}` / `--no-{spec['flag'][2:]}`" if spec["is_bool"] else f"`{spec['flag']}`"
        meaning = str(spec["help"]).replace("|", "\\|")
        rows.append(f"| `{spec['env']}` | {flag} | {_shown_default(spec['default'])} | {meaning} |")
    return "\n".join(rows) + "\n"
