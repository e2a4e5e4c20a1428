"""Every route the service answers, declared once: its method and path, what it takes, what it
answers and what it refuses with. The routing (`routes`, and the BentoML API methods in
`service.py` through `bentoml_api`) and the OpenAPI document (`openapi`) both come from here, so
no route, body or status can be documented apart from what is served.

Refusals are named by their error classes (`errors`): each knows its status, and its docstring is
what the document says of it. A route with a JSON body also refuses a malformed one (400) and
another media type (415).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from ..audio.files import MEDIA_TYPES
from ..engine import NonFiniteOutput
from ..errors import (
    Conflict,
    InputForbidden,
    InputNotFound,
    InputTooLarge,
    InvalidInput,
    InvalidParameter,
    JobNotFound,
    LimitReached,
    MusicGenError,
    NoSuchFile,
    NotAllowedHere,
    NotReady,
    OutputFull,
    OutputUnwritable,
    QueueFull,
    ShuttingDown,
    Unauthorized,
    UnsupportedMediaType,
)
from ..render import STREAM_FORMATS, STREAM_TAKES, STREAMABLE_NORMALIZATION
from ..schemas import (
    MAX_TAKES,
    ContinueRequest,
    ContinueResponse,
    GenerateRequest,
    HealthResponse,
    JobAccepted,
    JobIdRequest,
    JobView,
    UploadResponse,
)
from .playground_page import ASSET_NAMES, get_playground, get_playground_asset
from .streams import STREAM_HEADERS, continue_stream, job_events
from .uploads import post_upload
from .views import delete_job, get_health, get_job, get_job_audio, get_openapi

# A Starlette route's handler: the service and the request.
Handler = Callable[[Any, Request], Awaitable[Response]]


@dataclass(frozen=True)
class Answer:
    """A route's successful answer: a JSON `model`, or a body in one of `media` types (a stream,
    audio, a page), with the headers it sets (name: what it holds)."""

    status: int
    description: str
    model: type[BaseModel] | None = None
    media: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    # An event stream's schema describes each of its events (OpenAPI 3.1 has no item schema of its own).
    event: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Parameter:
    """A path, query or header parameter."""

    name: str
    where: Literal["path", "query", "header"]
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Endpoint:
    """One route: served by BentoML (an API method of the service, `handler` None) or by the
    Starlette app mounted beside them (`handler`)."""

    method: Literal["GET", "POST", "DELETE"]
    path: str
    name: str  # the operation's id
    summary: str
    answer: Answer
    refusals: tuple[type[MusicGenError], ...] = ()
    body: type[BaseModel] | Literal["multipart"] | None = None
    parameters: tuple[Parameter, ...] = ()
    description: str = ""
    handler: Handler | None = None
    public: bool = False  # answered without an API key (MUSICGEN_API_KEYS_FILE)
    metered: bool = False  # counts against an API key's limits (generations, queued jobs, audio an hour)
    # Narrower bounds than `body`'s for some fields (property: JSON Schema keywords), which the route
    # checks itself; the document shows them in a schema of the route's own.
    body_bounds: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Rules across the body's fields (JSON Schema keywords), which the route checks itself; the
    # document adds them to the body's schema. (BentoML's own document cannot carry them, so they
    # stay out of the pydantic model.)
    body_rules: Mapping[str, Any] = field(default_factory=dict)

    @property
    def served_by_bentoml(self) -> bool:
        return self.handler is None

    def all_refusals(self, keys_required: bool = False) -> tuple[type[MusicGenError], ...]:
        """Its refusals, with those every route has: a Host or Origin this server does not serve
        (403), with keys a missing or unknown one (401) and a key's limits (429, where `metered`),
        and for a JSON POST a body of another media type (415) and, where it takes one, a malformed
        body (400)."""
        implied: list[type[MusicGenError]] = [NotAllowedHere]
        if keys_required and not self.public:
            implied.append(Unauthorized)
        if keys_required and self.metered:
            implied.append(LimitReached)
        if self.method == "POST" and self.body != "multipart":
            implied += [InvalidParameter, UnsupportedMediaType] if self.body is not None else [UnsupportedMediaType]
        return tuple(dict.fromkeys((*implied, *self.refusals)))


def _on_a_job(
    method: Literal["GET", "DELETE"],
    below: str,
    name: str,
    summary: str,
    answer: Answer,
    handler: Handler,
    *parameters: Parameter,
    refusals: tuple[type[MusicGenError], ...] = (),
    description: str = "",
) -> Endpoint:
    """A route on one job, `below` its URL: the job's id in the path, a 404 when no job has it."""
    return Endpoint(
        method,
        "/jobs/{job_id}" + below,
        name,
        summary,
        answer,
        (*refusals, JobNotFound),
        parameters=(_JOB_ID, *parameters),
        description=description,
        handler=handler,
    )


def _posted(endpoint: Endpoint, path: str, name: str) -> Endpoint:
    """A route on a job (`endpoint`) as a POST at `path` that takes the job's id in its body."""
    summary = f"The same as {endpoint.method} {endpoint.path}, for bentoml.SyncHTTPClient."
    return Endpoint("POST", path, name, summary, endpoint.answer, (JobNotFound,), body=JobIdRequest)


_JOB_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["status", "progress", "result"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "JSON: the job as GET /jobs/{job_id} shows it (status, result), or its id and progress.",
        },
        "id": {"type": "string", "description": "Where the event stands in the job's life; resume after it."},
        "retry": {"type": "integer", "description": "Milliseconds to wait before reconnecting."},
    },
}
_NOT_READY = (NotReady, ShuttingDown)
# What a request that reads a source file and writes a new one may be refused with.
_SOURCE_REFUSALS = (InputForbidden, InputNotFound, InputTooLarge, InvalidInput, *_NOT_READY)
_WRITE_REFUSALS = (OutputFull, OutputUnwritable)

_JOB_ID = Parameter("job_id", "path", "The id POST /generate answered.")
_TAKE = Parameter(
    "take",
    "query",
    "Which take's audio: 0 (the default) to takes - 1.",
    {"type": "integer", "minimum": 0, "maximum": MAX_TAKES - 1, "default": 0},
)
_LAST_EVENT_ID = Parameter("Last-Event-ID", "header", "The id of the last event received, to resume after it.")


def _when(field: str, values: list[Any], then: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema rule: where `field` is one of `values`, the body also meets `then`."""
    return {"if": {"properties": {field: {"enum": values}}, "required": [field]}, "then": then}


# As `render.check_plan` and `audio.files.check_output_form` have them: the sample formats and rates
# each container holds, and match_source taking the source's rate (so no sample_rate beside it).
_OUTPUT_FORM_RULES = [
    _when("output_format", ["flac"], {"properties": {"sample_format": {"enum": ["pcm16", "pcm24"]}}}),
    _when("output_format", ["ogg", "mp3"], {"properties": {"sample_format": {"enum": ["pcm16"]}}}),
    _when(
        "output_format", ["mp3"], {"properties": {"sample_rate": {"enum": [16000, 22050, 32000, 44100, 48000, None]}}}
    ),
    _when("match_source", [True], {"properties": {"sample_rate": {"enum": [None]}}}),
]

CONTINUE = Endpoint(
    "POST",
    "/continue",
    "continue_",
    "Continue the music in a file on the server's disk; answers with the new file's path.",
    Answer(200, "The new file, written.", ContinueResponse),
    (*_SOURCE_REFUSALS, *_WRITE_REFUSALS, NonFiniteOutput),
    body=ContinueRequest,
    metered=True,
    body_rules={"allOf": _OUTPUT_FORM_RULES},
)
CONTINUE_STREAM = Endpoint(
    "POST",
    "/continue/stream",
    "continue_stream",
    "Continue the music in a file on the server's disk; answers with the new file, streamed.",
    Answer(
        200,
        "The WAV file, streamed (Content-Length is its full size).",
        media=("audio/wav",),
        headers=STREAM_HEADERS,
    ),
    (*_SOURCE_REFUSALS, *_WRITE_REFUSALS),
    body=ContinueRequest,
    metered=True,
    body_rules={"allOf": _OUTPUT_FORM_RULES},
    body_bounds={
        "output_format": {"enum": list(STREAM_FORMATS)},
        "normalization": {"enum": list(STREAMABLE_NORMALIZATION)},
        "takes": {"maximum": STREAM_TAKES},
    },
    description="The same body and refusals as /continue (every refusal comes before the first byte, as JSON). "
    "Streams a WAV file (at sample_rate, in sample_format) whose header already holds the final length, then its "
    "audio as the codec "
    "decodes it; the complete stream equals the file named in X-Audio-Path. A stream carries one take, in wav, "
    "leveled by 'clip' or 'none'. A client that disconnects cancels the generation.",
    handler=continue_stream,
)
UPLOAD = Endpoint(
    "POST",
    "/uploads",
    "upload",
    "Store an audio file for later requests (for clients that share no disk with the server).",
    Answer(201, "Stored.", UploadResponse),
    (InvalidParameter, InputTooLarge, UnsupportedMediaType, InvalidInput, OutputFull),
    body="multipart",
    description="Multipart form data with the file in the field `file` (wav, flac, ogg or mp3). It is checked as a "
    "source file is and answered with a path that works as audio_path, melody_path and continue_from until it "
    "expires (MUSICGEN_UPLOAD_TTL_S). Past MUSICGEN_MAX_INPUT_MB: 413.",
    handler=post_upload,
)
GENERATE = Endpoint(
    "POST",
    "/generate",
    "generate",
    "Queue a generation job; answers 202 at once with its id and where to follow it.",
    Answer(
        202,
        "Queued (or answered from the cache, status succeeded).",
        JobAccepted,
        headers={"Location": "The job's URL."},
    ),
    (*_SOURCE_REFUSALS, Conflict, QueueFull),
    body=GenerateRequest,
    metered=True,
    # As `render.check_plan` has it: where a prompt starts means something only in a file to continue
    # (a key present but null is not one), and a job needs something to start from (a prompt that is
    # not blank, a melody or music to continue); a job matches a source only where it has one.
    body_rules={
        "allOf": [
            {
                "if": {"required": ["prompt_start_s"], "properties": {"prompt_start_s": {"type": "number"}}},
                "then": {"required": ["continue_from"], "properties": {"continue_from": {"type": "string"}}},
            },
            *_OUTPUT_FORM_RULES,
            _when(
                "match_source",
                [True],
                {"required": ["continue_from"], "properties": {"continue_from": {"type": "string"}}},
            ),
        ],
        "anyOf": [
            {"required": ["prompt"], "properties": {"prompt": {"pattern": r"\S"}}},
            {"required": ["melody_path"], "properties": {"melody_path": {"type": "string"}}},
            {"required": ["continue_from"], "properties": {"continue_from": {"type": "string"}}},
        ],
    },
)
GET_JOB = _on_a_job(
    "GET", "", "get_job", "A job's status, progress and result.", Answer(200, "The job.", JobView), get_job
)
DELETE_JOB = _on_a_job(
    "DELETE",
    "",
    "delete_job",
    "Cancel a queued job, or stop a running one at its next decoding step.",
    Answer(200, "The job, canceled or stopping.", JobView),
    delete_job,
)
# BentoML's API methods answer POST only, with the job's id in a JSON body, which is what
# `bentoml.SyncHTTPClient` can call.
JOB_STATUS = _posted(GET_JOB, "/jobs/status", "job_status")
JOB_CANCEL = _posted(DELETE_JOB, "/jobs/cancel", "cancel_job")
_PLAYGROUND = "A page to try the service in a browser: prompt, upload, continue (streamed), jobs."
_OPENAPI = "This OpenAPI 3.1 document: every route the service answers."
_HEALTH_SUMMARY = "What an orchestrator polls until the model is ready: loading, ready or error."
HEALTH = Endpoint(
    "POST", "/health", "health_post", _HEALTH_SUMMARY, Answer(200, "The service's state.", HealthResponse)
)

ENDPOINTS: tuple[Endpoint, ...] = (
    CONTINUE,
    CONTINUE_STREAM,
    UPLOAD,
    Endpoint(
        "GET",
        "/playground",
        "get_playground",
        _PLAYGROUND,
        Answer(200, "The page.", media=("text/html",)),
        handler=get_playground,
        public=True,  # a static page; what it asks the API for carries the key the person gives it
    ),
    Endpoint(
        "GET",
        "/playground/{asset}",
        "get_playground_asset",
        "The playground's stylesheet and script.",
        Answer(200, "The file.", media=("text/css", "text/javascript")),
        (NoSuchFile,),
        parameters=(Parameter("asset", "path", "The file's name.", {"type": "string", "enum": list(ASSET_NAMES)}),),
        handler=get_playground_asset,
        public=True,
    ),
    GENERATE,
    GET_JOB,
    DELETE_JOB,
    _on_a_job(
        "GET",
        "/events",
        "get_job_events",
        "A job's events as they happen (Server-Sent Events): status, progress, then its result.",
        Answer(200, "The event stream.", media=("text/event-stream",), event=_JOB_EVENT),
        job_events,
        _LAST_EVENT_ID,
        description="Events: `status` at each change of status (data: the job as GET /jobs/{job_id} shows it), "
        "`progress` while it runs (data: job_id, progress; at most 4 a second), and a final `result` (data: the "
        "job's view, with its result or error), after which the stream ends. Each event has an id; a client that "
        "reconnects with Last-Event-ID (or ?last_event_id=) gets only later events.",
    ),
    _on_a_job(
        "GET",
        "/audio",
        "get_job_audio",
        "A succeeded job's audio (of one of its takes), from any replica.",
        Answer(200, "The audio file, in the job's output format.", media=tuple(MEDIA_TYPES.values())),
        get_job_audio,
        _TAKE,
        refusals=(InvalidParameter, Conflict),
    ),
    JOB_STATUS,
    JOB_CANCEL,
    # The orchestrator polls it without a key; it says whether keys are required, nothing more.
    Endpoint("GET", "/health", "health_get", _HEALTH_SUMMARY, HEALTH.answer, handler=get_health, public=True),
    HEALTH,
    Endpoint(
        "GET",
        "/docs.json",
        "get_openapi",
        _OPENAPI,
        Answer(200, _OPENAPI, media=("application/json",)),
        handler=get_openapi,
    ),
)


def bentoml_api(endpoint: Endpoint) -> Any:
    """The `bentoml.api` decorator of a route BentoML serves: its path and its body's and answer's types."""
    import bentoml

    if not endpoint.served_by_bentoml or endpoint.method != "POST":
        raise ValueError(f"{endpoint.method} {endpoint.path} is not one of BentoML's API methods")
    body = endpoint.body if isinstance(endpoint.body, type) else None
    return bentoml.api(route=endpoint.path, input_spec=body, output_spec=endpoint.answer.model)


def check_served(bentoml_routes: set[str]) -> None:
    """Fails at start-up when the service's BentoML API methods and the declared ones differ."""
    declared = {endpoint.path for endpoint in ENDPOINTS if endpoint.served_by_bentoml}
    if bentoml_routes != declared:
        raise RuntimeError(
            f"BentoML serves {sorted(bentoml_routes)} but api/endpoints.py declares {sorted(declared)} for it"
        )
