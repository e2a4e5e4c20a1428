"""Request and response bodies of the HTTP API, with their limits in the types so they appear
in the generated OpenAPI page."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

OutputFormatField = Literal["wav", "flac", "ogg", "mp3"]
SampleRateField = Literal[16000, 22050, 32000, 44100, 48000, 88200, 96000]
SampleFormatField = Literal["pcm16", "pcm24", "float32"]
NormalizationField = Literal["none", "clip", "peak", "rms", "loudness"]


# The shortest length a duration may have: one codec frame (MusicGen's codec makes 50 a second).
MIN_DURATION_S = 0.02
# What an omitted duration_s or prompt_duration_s means, unless the server's limit is lower.
DEFAULT_DURATION_S = 10.0
MAX_TAKES = 4
# A path on the server's disk: absolute, and never with a NUL, which no file path can hold.
SERVER_PATH_PATTERN = r"^/[^\x00]*$"


def _integral_float_as_int(value: Any) -> Any:
    # JSON Schema's "integer" includes 5.0; strict validation alone would refuse it (and still
    # refuses 5.5, true and "5").
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer field: a JSON integer, or a number with no fractional part; never a boolean or a string.
Integer = Annotated[int, BeforeValidator(_integral_float_as_int)]


class GenerationOptions(BaseModel):
    """Sampling options shared by every generating route.

    Strict: a number field takes a finite JSON number (an integer is fine), never `true`, `"10"` or
    the `Infinity` and `NaN` some encoders write; a boolean takes `true` or `false`, never `0` or
    `1`. Coercing such values would answer a request the client did not mean.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    prompt: str = Field(
        "",
        max_length=2000,
        description="Text conditioning, e.g. 'lo-fi piano with soft drums'. Empty: no text conditioning (as "
        "audiocraft treats an empty description); a space is text like any other.",
    )
    duration_s: Annotated[float, Field(ge=MIN_DURATION_S)] | None = Field(
        None,
        description="Seconds of NEW music to generate: at least 0.02 (one codec frame), up to "
        "MUSICGEN_MAX_DURATION_S (30 by default). Omitted: 10, or that limit where it is lower.",
    )
    cfg_coef: float = Field(
        3.0, ge=0, le=30, description="Classifier-free guidance strength; 1 or less turns guidance off."
    )
    # The bounds come before the validator, or the document shows them as "ge"/"le", not "minimum"/"maximum".
    seed: Annotated[int, Field(ge=0, le=2**31 - 1), BeforeValidator(_integral_float_as_int)] | None = Field(
        None, description="Random seed; the seed used is always returned. Omit for a random one."
    )
    temperature: float = Field(1.0, ge=0, le=10, description="Sampling temperature; 0 means greedy decoding.")
    top_k: Integer = Field(250, ge=0, le=2048, description="Sample from the k most likely codes; 0 turns it off.")
    top_p: float = Field(0.0, ge=0, le=1, description="Nucleus sampling threshold; 0 turns it off.")
    output_format: OutputFormatField = Field("wav", description="Container of the output file.")
    sample_rate: SampleRateField | None = Field(
        None,
        description="The file's sample rate in Hz: 16000, 22050, 32000, 44100, 48000, 88200 or 96000 (mp3 up to "
        "48000), resampled after levelling. Omitted: the model's (32000), or the source's with match_source.",
    )
    sample_format: SampleFormatField = Field(
        "pcm16",
        description="The file's samples: pcm16, pcm24 (wav, flac) or float32 (wav). ogg and mp3 are lossy and have "
        "none to choose: leave it out for them.",
    )
    match_source: bool = Field(
        False,
        description="The file takes the source's sample rate and channel count, to drop into its session; needs a "
        "source (audio_path, or a job's continue_from) and no sample_rate.",
    )
    normalization: NormalizationField = Field(
        "clip",
        description="Level of the new music: clip (as generated, within full scale), peak (highest peak at -1 dBFS), "
        "rms (-18 dBFS RMS), loudness (loudness_lufs integrated loudness, ITU-R BS.1770, peaks limited below "
        "-1 dBFS) or none (as clip). The source part of include_source is never altered; silence is left as it is.",
    )
    loudness_lufs: float = Field(
        -14.0, ge=-70, le=-5, description="With normalization 'loudness': the target integrated loudness in LUFS."
    )
    takes: Integer = Field(
        1,
        ge=1,
        le=MAX_TAKES,
        description="Variations to pick from, 1 to 4: decoded together, with consecutive seeds from the request's, "
        "each in its own file.",
    )


class SourcePrompt(GenerationOptions):
    """Where the audio prompt lies in a source to continue (`audio_path`, or a job's `continue_from`)."""

    prompt_duration_s: Annotated[float, Field(ge=MIN_DURATION_S)] | None = Field(
        None,
        description="Seconds of the source used as the audio prompt, at its END unless prompt_start_s says where "
        "(at least 0.02, one codec frame); a shorter source is used whole. Omitted: 10, or the longest prompt "
        "the window allows where that is lower.",
    )
    prompt_start_s: Annotated[float, Field(ge=0)] | None = Field(
        None,
        description="Where the audio prompt starts in the source, in seconds from its beginning: the new music "
        'continues from the prompt\'s end ("continue from the chorus"). Omitted: the prompt is the end of the source.',
    )


class ContinueRequest(SourcePrompt):
    """Body of POST /continue."""

    audio_path: str = Field(
        ...,
        min_length=1,
        pattern=SERVER_PATH_PATTERN,
        description="Absolute path of the source audio on the server's disk (wav, mp3, flac or ogg).",
    )
    include_source: bool = Field(
        False, description="Output the source (up to the prompt's end) followed by the new music."
    )


class Provenance(BaseModel):
    """Where a file came from; the same is written into the file's own metadata."""

    model: str = Field(description="The model-store tag of the weights that made it.")
    licence: str = Field(description="The licence of those weights.")
    seed: int
    software: str = Field(description="This service's name and version.")
    created_at: str = Field(description="When it was made, ISO 8601 UTC.")
    prompt: str | None = Field(
        description="The text prompt (its first 200 characters); null when MUSICGEN_METADATA_PROMPT is off."
    )
    parameters: dict[str, Any] = Field(description="The generation parameters, as resolved by the server.")


class Take(BaseModel):
    """One of a request's takes."""

    audio_path: str = Field(description="Absolute path of its file in the output directory.")
    seed: int
    duration_s: float


class JobTake(Take):
    """One of a job's takes."""

    audio_url: str = Field(description="GET this for the take's audio, from any replica.")


class RenderResult(BaseModel):
    """What a generation wrote: its file (the first take's), what it holds, and where it came from."""

    audio_path: str = Field(description="Absolute path of the new file in the output directory.")
    duration_s: float = Field(description="Length of that file in seconds.")
    sample_rate: int
    channels: int
    prompt_start_s: float | None = Field(
        None, description="Where the audio prompt started in the source, in seconds; null without a source."
    )
    prompt_duration_s: float | None = Field(
        None, description="Seconds of the source actually used as the prompt; null without a source."
    )
    seed: int = Field(description="Seed used; send it back to reproduce the result.")
    model: str
    provenance: Provenance = Field(description="What the file's metadata says about where it came from.")
    takes: list[Take] = Field(description="Every take, the first being the one the fields above describe.")


class ContinueResponse(RenderResult):
    """Body of a successful POST /continue."""

    prompt_start_s: float = Field(description="Where the audio prompt started in the source, in seconds.")
    prompt_duration_s: float = Field(description="Seconds of the source actually used as the prompt.")
    elapsed_s: float = Field(description="Seconds the server spent on the request.")


class EngineHealth(BaseModel):
    """What the decoding engine is doing, in GET /health once the model is ready."""

    kind: Literal["static", "transformers", "mock"] = Field(description="The decoding loop (MUSICGEN_ENGINE).")
    slots: int = Field(description="Requests decoded together at most (1 with transformers' generate()).")
    decoding: int | None = Field(default=None, description="Static engine: requests holding a slot now.")
    waiting: int | None = Field(default=None, description="Static engine: requests queued for a slot now.")
    steps: int | None = Field(default=None, description="Static engine: batched decoding steps since start.")
    prefills_shared: int | None = Field(
        default=None,
        description="Static engine: requests since start whose prefill was copied from another's with the same "
        "conditioning and prompt (the takes of one request) instead of computed again.",
    )
    graphs: Literal["on", "off"] | None = Field(
        default=None, description="Static engine: whether decoding steps replay captured CUDA graphs."
    )
    graphs_reason: str | None = Field(
        default=None,
        description="Why graphs are on or off: not a CUDA device, checked against eager decoding at start-up, "
        "or the capture failure or mismatch that turned them off.",
    )
    batch_invariant: bool | None = Field(
        default=None,
        description="Static engine: whether a request's tokens are the same batched as alone on this machine's "
        "kernels (checked at start-up).",
    )
    batch_invariance_reason: str | None = Field(
        default=None,
        description="What the start-up check found, and the rows each step computes for it.",
    )
    weights: Literal["packed", "dense", "int8"] | None = Field(
        default=None,
        description="Static engine: whether the decoder's weights are packed once for oneDNN's products "
        "(CPUs in bfloat16), quantized to int8 (MUSICGEN_QUANTIZE=int8, CPUs) or multiplied as they are.",
    )
    weights_reason: str | None = Field(
        default=None, description="Why, and the start-up check of packed or int8 products."
    )
    attention: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None,
        description="Static engine: the precision of its attention caches, and so of a decoding step's attention.",
    )
    attention_reason: str | None = Field(
        default=None,
        description="Why: the weights' precision on GPUs; on CPUs with bfloat16 weights, what the start-up "
        "measurement of both precisions' attention found.",
    )
    threads: int | None = Field(
        default=None,
        description="Static engine: the CPU threads its decoding thread computes with. On a CPU it is the only "
        "thread that computes on several cores; a request's codec and text encoder run on one.",
    )


class MemoryHealth(BaseModel):
    """The memory plan (MUSICGEN_MAX_MEMORY_MB) and the measured peak, in MiB."""

    budget_mb: int = Field(description="The budget: MUSICGEN_MAX_MEMORY_MB, or what the device had free.")
    budget_source: str
    weights_mb: int = Field(
        description="The weights as the engine holds them, counted from the checkpoint: in their precision, the "
        "decoder's linear ones in int8 with MUSICGEN_QUANTIZE=int8."
    )
    loading_mb: int = Field(
        description="The weights while they load, before the engine quantizes them (weights_mb without int8)."
    )
    cache_mb_per_slot: float = Field(description="KV cache of one slot holding a full window.")
    margin_mb: int = Field(description="Activations, sampling buffers, the codec and the runtime, planned.")
    planned_mb: int = Field(description="weights + slots x cache + margin.")
    slots: int = Field(description="Decoding slots the budget holds (at most MUSICGEN_BATCH_SLOTS).")
    cache_positions: int = Field(description="Positions each slot's cache holds, allocated at start-up.")
    peak_mb: int | None = Field(
        default=None,
        description="The peak so far, from warm-up on (null before): peak CUDA allocations on a GPU, the process's "
        "peak resident set on a CPU.",
    )


class PrecisionHealth(BaseModel):
    """The weights' precision and why (MUSICGEN_DTYPE; `auto` measures on CPUs)."""

    dtype: Literal["float32", "float16", "bfloat16"]
    reason: str = Field(description="Why: the setting, or what `auto` found on this device.")


class HealthResponse(BaseModel):
    """Body of GET /health."""

    status: Literal["loading", "ready", "error"]
    keys_required: bool = Field(
        False, description="Whether every route but this one needs an API key (Authorization: Bearer <key>)."
    )
    model: str
    gpu_id: int
    device: str
    detail: str | None = None
    licence: str | None = Field(None, description="Licence of the served weights, from the model store.")
    precision: PrecisionHealth | None = Field(None, description="The weights' precision, once chosen.")
    memory: MemoryHealth | None = Field(
        None, description="The memory plan, once made; its measured peak after warm-up."
    )
    engine: EngineHealth | None = Field(None, description="The decoding engine, once the model is ready.")
    melody: bool | None = Field(
        None, description="Whether the served model follows a melody (melody_path), once it is ready."
    )


class UploadResponse(BaseModel):
    """Body of POST /uploads' 201 answer."""

    audio_path: str = Field(description="The stored file: usable as audio_path, melody_path or continue_from.")
    duration_s: float
    sample_rate: int
    channels: int
    expires_at: str = Field(description="When the file will be deleted, ISO 8601 UTC (MUSICGEN_UPLOAD_TTL_S).")


JobStatusField = Literal["queued", "running", "succeeded", "failed", "canceled"]
WebhookEvent = Literal["started", "succeeded", "failed", "canceled"]


class GenerateRequest(SourcePrompt):
    """Body of POST /generate: an asynchronous job."""

    prompt: str = Field(
        "",
        max_length=2000,
        description="Text conditioning; required unless melody_path or continue_from is given. Empty: no text "
        "conditioning (as audiocraft treats an empty description).",
    )
    duration_s: Annotated[float, Field(ge=MIN_DURATION_S)] | None = Field(
        None,
        description="Seconds of music: at least 0.02 (one codec frame), up to MUSICGEN_MAX_JOB_DURATION_S (120 by "
        "default; past the window it is generated in overlapping windows). Omitted: 10, or that limit where it "
        "is lower.",
    )
    melody_path: str | None = Field(
        None,
        pattern=SERVER_PATH_PATTERN,
        description="Melody models: an audio file on the server's disk whose melody conditions the music.",
    )
    continue_from: str | None = Field(
        None,
        pattern=SERVER_PATH_PATTERN,
        description="An audio file on the server's disk to continue, with /continue's semantics.",
    )
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Submitting the same key again returns the first job instead of queueing another.",
    )
    webhook_url: str | None = Field(
        None,
        min_length=1,
        max_length=2000,
        pattern=r"^https?://[^\s]+$",
        description="Where to POST the job's events (signed per Standard Webhooks with the server's secret; the "
        "body is the job's view). Its host must be one of MUSICGEN_WEBHOOK_ALLOWED_HOSTS.",
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None,
        min_length=1,
        description="Which events to send: started, succeeded, failed, canceled. Omitted: all four.",
    )


class JobIdRequest(BaseModel):
    """Body of POST /jobs/status and POST /jobs/cancel."""

    model_config = ConfigDict(extra="forbid", strict=True)

    job_id: str = Field(description="The id POST /generate answered.")


class JobAccepted(BaseModel):
    """Body of POST /generate's 202 answer."""

    job_id: str
    status: JobStatusField
    queue_position: int | None = Field(description="Jobs ahead of this one (0: next to run); null once it runs.")
    status_url: str


class JobResult(BaseModel):
    """What a succeeded job produced."""

    audio_url: str = Field(description="GET this for the audio, from any replica.")
    audio_path: str = Field(description="The file on the disk of the replica that generated it.")
    duration_s: float
    sample_rate: int
    channels: int
    seed: int
    model: str
    cached: bool = Field(description="True when an identical earlier request's result was returned.")
    provenance: Provenance | None = Field(None, description="What the file's metadata says about where it came from.")
    takes: list[JobTake] = Field(default_factory=list, description="Every take, the first being the one above.")


class WebhookDelivery(BaseModel):
    """How one event's delivery stands."""

    event: WebhookEvent
    webhook_id: str = Field(description="The webhook-id header: the same on every attempt at this event.")
    attempts: int
    last_status: int | None = Field(description="The receiver's last HTTP status; null before an answer.")
    last_error: str | None = Field(description="Why the last attempt failed, when it did.")
    delivered_at: str | None = Field(description="When a 2xx answered it, ISO 8601 UTC.")
    next_attempt_at: str | None = Field(description="When it is tried next, while it is pending.")
    gave_up_at: str | None = Field(description="When retrying stopped (MUSICGEN_WEBHOOK_RETRY_S).")


class WebhookView(BaseModel):
    """A job's webhook: where its events go, and each delivery so far."""

    url: str
    events: list[WebhookEvent]
    deliveries: list[WebhookDelivery]


class JobView(BaseModel):
    """Body of GET /jobs/{id}."""

    job_id: str
    status: JobStatusField
    progress: float = Field(description="0..1, from decoding steps.")
    queue_position: int | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    request: dict[str, object]
    result: JobResult | None
    error: str | None
    webhook: WebhookView | None = Field(None, description="Its webhook's deliveries, when it has one.")
