"""The OpenAPI document served at `/docs.json`: every route the service answers, with every answer.

BentoML generates a document for its `@bentoml.api` methods only, drops `null` from optional
fields (`queue_position` is declared an integer, yet is null once a job runs), declares 3.0.2 while
writing 3.1's numeric `exclusiveMinimum`, and knows nothing of the GET/DELETE routes or of the
service's own error answers. This module writes the service's routes from the same pydantic models
the routes validate with (JSON Schema 2020-12, which is OpenAPI 3.1's dialect) and keeps BentoML's
infrastructure routes (`/healthz`, `/livez`, `/readyz`, `/metrics`) as BentoML describes them.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from ..render.stream import STREAMABLE_NORMALIZATION
from ..schemas import (
    MAX_TAKES,
    ContinueRequest,
    ContinueResponse,
    GenerateRequest,
    HealthResponse,
    JobAccepted,
    JobView,
    UploadResponse,
)
from ..settings import Settings

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What is wrong and what to change; starts with the field."},
        "field": {"type": "string", "description": "The request field at fault, when one is."},
        "detail": {
            "type": "array",
            "items": {"type": "object"},
            "description": "pydantic's list of validation errors, for a body that breaks the schema.",
        },
    },
}

_STATUS_TEXT = {
    400: "A field missing, of the wrong type or out of range; an unknown field; a body that is not valid JSON.",
    403: "A path outside the allowed input directories (MUSICGEN_INPUT_ROOTS).",
    404: "No file at a path in the request; an unknown or expired job id.",
    409: "The audio of a job that has not succeeded; an idempotency key reused for another request.",
    413: "A source file over the size or duration limit.",
    415: "A body that is not JSON (send Content-Type: application/json).",
    422: "A source file that cannot be used: a directory, empty, truncated, not audio, a symlink loop, "
    "shorter than one codec frame.",
    503: "The model is loading or failed to load, the job queue is full, the server is stopping, or the output "
    "directory cannot be written; Retry-After says when to try again.",
    507: "The output directory is full; nothing was written.",
}

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": "The id POST /generate answered.",
    "schema": {"type": "string"},
}


_TAKE = {
    "name": "take",
    "in": "query",
    "required": False,
    "description": "Which take's audio: 0 (the default) to takes - 1.",
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_TAKES - 1, "default": 0},
}


_STREAM_HEADERS = {
    "X-Audio-Path": "Where the complete file is put in the output directory once the stream ends.",
    "X-Seed": "The seed used.",
    "X-Sample-Rate": "Samples per second.",
    "X-Channels": "Audio channels.",
    "X-Duration-S": "Seconds of audio in the file (the source's first with include_source).",
}


class _Document:
    """Builds the paths and the component schemas they refer to."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}

    def ref(self, model: type[BaseModel], mode: str) -> dict[str, str]:
        generated = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)  # type: ignore[arg-type]
        self.schemas.update(generated.pop("$defs", {}))
        self.schemas[model.__name__] = generated
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def json_body(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def answers(self, success: dict[int, dict[str, Any]], errors: list[int]) -> dict[str, Any]:
        responses: dict[str, Any] = {str(status): answer for status, answer in success.items()}
        for status in errors:
            answer: dict[str, Any] = {
                "description": _STATUS_TEXT[status],
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
            if status == 503:
                answer["headers"] = _RETRY_AFTER
            responses[str(status)] = answer
        return responses

    def ok(self, model: type[BaseModel], description: str = "Success.") -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": self.ref(model, "serialization")}},
        }


def _declare_limits(schemas: dict[str, Any], settings: Settings) -> None:
    """Writes the limits that come from settings into the request schemas, so that every request
    the document allows is one the service accepts."""
    limits = {
        "ContinueRequest": {"duration_s": settings.max_duration_s, "prompt_duration_s": settings.max_prompt_s},
        "GenerateRequest": {"duration_s": settings.max_job_duration_s, "prompt_duration_s": settings.max_prompt_s},
    }
    for model, maxima in limits.items():
        for field, maximum in maxima.items():
            schema = schemas[model]["properties"][field]
            # An optional number is `anyOf: [number, null]`; the bound belongs to the number.
            for branch in schema.get("anyOf", [schema]):
                if branch.get("type") == "number":
                    branch["maximum"] = maximum
    # A stream: /continue's body, with what a stream can carry (see render/stream.py).
    stream = copy.deepcopy(schemas["ContinueRequest"])
    stream["title"] = "ContinueStreamRequest"
    stream["description"] = "Body of POST /continue/stream: /continue's, for one take in WAV, leveled as generated."
    stream["properties"]["output_format"]["enum"] = ["wav"]
    stream["properties"]["normalization"]["enum"] = list(STREAMABLE_NORMALIZATION)
    stream["properties"]["takes"]["maximum"] = 1
    schemas["ContinueStreamRequest"] = stream
    # Where a prompt starts means something only in a file to continue: a number there needs a
    # continue_from path (a key present but null is not one).
    schemas["GenerateRequest"]["allOf"] = [
        {
            "if": {"required": ["prompt_start_s"], "properties": {"prompt_start_s": {"type": "number"}}},
            "then": {"required": ["continue_from"], "properties": {"continue_from": {"type": "string"}}},
        }
    ]
    # A job needs something to start from: a prompt that is not blank, a melody or music to continue.
    schemas["GenerateRequest"]["anyOf"] = [
        {"required": ["prompt"], "properties": {"prompt": {"pattern": r"\S"}}},
        {"required": ["melody_path"], "properties": {"melody_path": {"type": "string"}}},
        {"required": ["continue_from"], "properties": {"continue_from": {"type": "string"}}},
    ]


def openapi_document(bentoml_document: dict[str, Any], title: str, version: str, settings: Settings) -> dict[str, Any]:
    """The service's OpenAPI 3.1 document; `bentoml_document` is BentoML's, for its infrastructure routes."""
    doc = _Document()
    job_id_body = doc.json_body(
        {
            "type": "object",
            "required": ["job_id"],
            "additionalProperties": False,
            "properties": {"job_id": {"type": "string"}},
        }
    )
    source_errors = [400, 403, 404, 413, 415, 422, 503]
    paths: dict[str, Any] = {
        "/continue": {
            "post": {
                "operationId": "continue_",
                "summary": "Continue the music in a file on the server's disk; answers with the new file's path.",
                "requestBody": doc.json_body(doc.ref(ContinueRequest, "validation")),
                "responses": doc.answers({200: doc.ok(ContinueResponse)}, [*source_errors, 507]),
            }
        },
        "/continue/stream": {
            "post": {
                "operationId": "continue_stream",
                "summary": "Continue the music in a file on the server's disk; answers with the new file, streamed.",
                "description": "The same body and refusals as /continue (every refusal comes before the first byte, as "
                "JSON). Streams a 16-bit PCM WAV file whose header already holds the final length, then its audio as "
                "the codec decodes it; the complete stream equals the file named in X-Audio-Path. A stream carries "
                "one take, in wav, leveled by 'clip' or 'none'. A client that disconnects cancels the generation.",
                "requestBody": doc.json_body({"$ref": "#/components/schemas/ContinueStreamRequest"}),
                "responses": doc.answers(
                    {
                        200: {
                            "description": "The WAV file, streamed (Content-Length is its full size).",
                            "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
                            "headers": {
                                name: {"description": description, "schema": {"type": "string"}}
                                for name, description in _STREAM_HEADERS.items()
                            },
                        }
                    },
                    [*source_errors, 507],
                ),
            }
        },
        "/uploads": {
            "post": {
                "operationId": "upload",
                "summary": "Store an audio file for later requests (for clients that share no disk with the server).",
                "description": "Multipart form data with the file in the field `file` (wav, flac, ogg or mp3). It is "
                "checked as a source file is and answered with a path that works as audio_path, melody_path and "
                "continue_from until it expires (MUSICGEN_UPLOAD_TTL_S). Past MUSICGEN_MAX_INPUT_MB: 413.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file"],
                                "properties": {"file": {"type": "string", "format": "binary"}},
                            }
                        }
                    },
                },
                "responses": doc.answers(
                    {201: {**doc.ok(UploadResponse, "Stored."), "description": "Stored."}}, [400, 413, 415, 422, 507]
                ),
            }
        },
        "/playground": {
            "get": {
                "operationId": "get_playground",
                "summary": "A page to try the service in a browser: prompt, upload, continue (streamed), jobs.",
                "responses": {
                    "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/playground/{asset}": {
            "get": {
                "operationId": "get_playground_asset",
                "summary": "The playground's stylesheet and script.",
                "parameters": [
                    {
                        "name": "asset",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["playground.css", "playground.js"]},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {
                            "text/css": {"schema": {"type": "string"}},
                            "text/javascript": {"schema": {"type": "string"}},
                        },
                    },
                    "404": {
                        "description": "No such file.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                },
            }
        },
        "/generate": {
            "post": {
                "operationId": "generate",
                "summary": "Queue a generation job; answers 202 at once with its id and where to follow it.",
                "requestBody": doc.json_body(doc.ref(GenerateRequest, "validation")),
                "responses": doc.answers(
                    {
                        202: {
                            **doc.ok(JobAccepted, "Queued (or answered from the cache, status succeeded)."),
                            "headers": {"Location": {"description": "The job's URL.", "schema": {"type": "string"}}},
                        }
                    },
                    [*source_errors, 409],
                ),
            }
        },
        "/jobs/{job_id}": {
            "get": {
                "operationId": "get_job",
                "summary": "A job's status, progress and result.",
                "parameters": [_JOB_ID],
                "responses": doc.answers({200: doc.ok(JobView)}, [404]),
            },
            "delete": {
                "operationId": "delete_job",
                "summary": "Cancel a queued job, or stop a running one at its next decoding step.",
                "parameters": [_JOB_ID],
                "responses": doc.answers({200: doc.ok(JobView)}, [404]),
            },
        },
        "/jobs/{job_id}/events": {
            "get": {
                "operationId": "get_job_events",
                "summary": "A job's events as they happen (Server-Sent Events): status, progress, then its result.",
                "description": "Events: `status` at each change of status (data: the job as GET /jobs/{job_id} shows "
                "it), `progress` while it runs (data: job_id, progress; at most 4 a second), and a final `result` "
                "(data: the job's view, with its result or error), after which the stream ends. Each event has an id; "
                "a client that reconnects with Last-Event-ID (or ?last_event_id=) gets only later events.",
                "parameters": [
                    _JOB_ID,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "The id of the last event received, to resume after it.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": doc.answers(
                    {
                        200: {
                            "description": "The event stream.",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        }
                    },
                    [404],
                ),
            }
        },
        "/jobs/{job_id}/audio": {
            "get": {
                "operationId": "get_job_audio",
                "summary": "A succeeded job's audio (of one of its takes), from any replica.",
                "parameters": [_JOB_ID, _TAKE],
                "responses": doc.answers(
                    {
                        200: {
                            "description": "The audio file, in the job's output format.",
                            "content": {
                                media: {"schema": {"type": "string", "format": "binary"}}
                                for media in ("audio/wav", "audio/flac", "audio/ogg", "audio/mpeg")
                            },
                        }
                    },
                    [400, 404, 409],
                ),
            }
        },
        "/jobs/status": {
            "post": {
                "operationId": "job_status",
                "summary": "The same as GET /jobs/{job_id}, for bentoml.SyncHTTPClient.",
                "requestBody": job_id_body,
                "responses": doc.answers({200: doc.ok(JobView)}, [400, 404, 415]),
            }
        },
        "/jobs/cancel": {
            "post": {
                "operationId": "cancel_job",
                "summary": "The same as DELETE /jobs/{job_id}, for bentoml.SyncHTTPClient.",
                "requestBody": job_id_body,
                "responses": doc.answers({200: doc.ok(JobView)}, [400, 404, 415]),
            }
        },
        "/health": {
            method: {
                "operationId": f"health_{method}",
                "summary": "What an orchestrator polls until the model is ready: loading, ready or error.",
                "responses": doc.answers({200: doc.ok(HealthResponse)}, [415] if method == "post" else []),
            }
            for method in ("get", "post")
        },
    }
    infrastructure = {
        path: copy.deepcopy(item)
        for path, item in bentoml_document.get("paths", {}).items()
        if path in ("/healthz", "/livez", "/readyz", "/metrics")
    }
    _declare_limits(doc.schemas, settings)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": bentoml_document.get("info", {}).get("description", ""),
        },
        "paths": {**paths, **infrastructure},
        "components": {"schemas": doc.schemas},
    }
