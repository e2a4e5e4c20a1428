"""Request and response bodies of the HTTP API, with their limits in the types so they appear
in the generated OpenAPI page."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

OutputFormatField = Literal["wav", "flac", "ogg", "mp3"]


class GenerationOptions(BaseModel):
    """Sampling options shared by every generating route."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field("", max_length=2000, description="Text conditioning, e.g. 'lo-fi piano with soft drums'.")
    duration_s: float = Field(
        10.0,
        gt=0,
        description="Seconds of NEW music to generate (up to MUSICGEN_MAX_DURATION_S, 30 by default).",
    )
    cfg_coef: float = Field(
        3.0, ge=0, le=30, description="Classifier-free guidance strength; 1 or less turns guidance off."
    )
    seed: int | None = Field(
        None, ge=0, le=2**31 - 1, description="Random seed; the seed used is always returned. Omit for a random one."
    )
    temperature: float = Field(1.0, ge=0, le=10, description="Sampling temperature; 0 means greedy decoding.")
    top_k: int = Field(250, ge=0, le=2048, description="Sample from the k most likely codes; 0 turns it off.")
    top_p: float = Field(0.0, ge=0, le=1, description="Nucleus sampling threshold; 0 turns it off.")
    output_format: OutputFormatField = Field("wav", description="Container of the output file.")


class ContinueRequest(GenerationOptions):
    """Body of POST /continue."""

    audio_path: str = Field(
        ...,
        min_length=1,
        description="Absolute path of the source audio on the server's disk (wav, mp3, flac or ogg).",
    )
    prompt_duration_s: float = Field(
        10.0,
        gt=0,
        description="Seconds at the END of the source used as the audio prompt; a shorter source is used whole.",
    )
    include_source: bool = Field(False, description="Output the source followed by the new music.")


class ContinueResponse(BaseModel):
    """Body of a successful POST /continue."""

    audio_path: str = Field(description="Absolute path of the new file in the output directory.")
    duration_s: float = Field(description="Length of that file in seconds.")
    sample_rate: int
    channels: int
    prompt_duration_s: float = Field(description="Seconds of the source actually used as the prompt.")
    seed: int = Field(description="Seed used; send it back to reproduce the result.")
    model: str
    elapsed_s: float = Field(description="Seconds the server spent on the request.")


class HealthResponse(BaseModel):
    """Body of GET /health."""

    status: Literal["loading", "ready", "error"]
    model: str
    gpu_id: int
    device: str
    detail: str | None = None
    licence: str | None = Field(None, description="Licence of the served weights, from the model store.")
