"""The OpenAPI document at /docs.json tells the truth: it is a valid document, it lists every route
the service answers, and the service's answers to generated requests (schemathesis, a bounded
number of examples per operation) match it: declared statuses, declared bodies, no server error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

# Imported here, at collection, rather than by `from_url` inside the test: pytest rewrites
# schemathesis's modules as it imports them (schemathesis is a pytest plugin), and compiling this
# one twenty minutes into a CI run once failed inside CPython 3.11's parser ("SystemError: AST
# constructor recursion depth mismatch").
import schemathesis.specs.openapi.schemas
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis.specs.openapi.checks import positive_data_acceptance

from musicgen_bento.api.client import MusicGenClient

from .conftest import TINY_TEXT, Server, write_tone


@pytest.fixture(scope="module")
def server(start_server: Any, tiny_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Server:
    inputs = tmp_path_factory.mktemp("openapi-inputs")
    started: Server = start_server(
        settings={
            "MUSICGEN_MODEL": TINY_TEXT,
            # Generated requests stay cheap: limits below the 10 s an omitted duration means (which
            # then means the limit), a window that keeps prompts short, and paths outside this folder
            # are refused.
            "MUSICGEN_MAX_DURATION_S": "2",
            "MUSICGEN_MAX_JOB_DURATION_S": "2",
            "MUSICGEN_WINDOW_S": "4",
            "MUSICGEN_EXTEND_STRIDE_S": "2",
            "MUSICGEN_INPUT_ROOTS": str(inputs),
        }
    )
    started.wait_until("ready", timeout=180)
    return started


@pytest.fixture(scope="module")
def inputs(server: Server) -> Path:
    return Path(server.env["MUSICGEN_INPUT_ROOTS"])


@pytest.fixture(scope="module")
def document(server: Server) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/docs.json", timeout=30)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)


def test_every_route_the_service_answers_is_in_the_document(document: dict[str, Any]) -> None:
    import service

    answered = {api.route for api in service.MusicGen.apis.values()}
    answered |= service.http_routes.paths - {"/docs.json"}
    assert answered - set(document["paths"]) == set()
    for path, methods in {"/jobs/{job_id}": {"get", "delete"}, "/health": {"get", "post"}}.items():
        assert methods <= set(document["paths"][path]), path


def test_every_error_answer_is_declared(document: dict[str, Any]) -> None:
    continue_answers = set(document["paths"]["/continue"]["post"]["responses"])
    assert {"200", "400", "403", "404", "413", "415", "422", "503", "507"} <= continue_answers
    generate_answers = set(document["paths"]["/generate"]["post"]["responses"])
    assert {"202", "400", "403", "404", "409", "413", "415", "422", "503"} <= generate_answers
    error = document["components"]["schemas"]["Error"]
    assert error["properties"]["detail"]["type"] == "array"


def test_answers_match_the_document(server: Server) -> None:
    # Schemathesis' own pytest integration does not run on this pytest; its operations and their
    # hypothesis strategies are used directly, a bounded number of examples per operation.
    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10

    for operation in operations:
        # No schema can say that a binary part holds audio: schema-valid bytes that are not audio are
        # rightly refused (422), so /uploads is checked for everything but accepting them.
        excluded = [positive_data_acceptance] if operation.path == "/uploads" else []

        def checked(case: Any, excluded: list[Any] = excluded) -> None:
            case.call_and_validate(timeout=60, excluded_checks=excluded)

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers(case: Any) -> None:
            checked(case)

        try:
            answers()
        except BaseException as error:  # every operation runs; failures are reported together
            if isinstance(error, KeyboardInterrupt):
                raise
            failures.append(f"{operation.label}: {error}")
    assert not failures, "\n\n".join(failures)


def test_omitted_durations_mean_the_limits_where_they_are_lower(server: Server, inputs: Path) -> None:
    source = write_tone(inputs / "source.wav", seconds=5.0)
    response = httpx.post(f"{server.url}/continue", json={"audio_path": str(source)}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["duration_s"] == pytest.approx(2.0, abs=0.01)  # MUSICGEN_MAX_DURATION_S
    assert body["prompt_duration_s"] == pytest.approx(3.0, abs=0.03)  # MUSICGEN_WINDOW_S - 1
    explicit = httpx.post(f"{server.url}/continue", json={"audio_path": str(source), "duration_s": 3}, timeout=60)
    assert explicit.status_code == 400
    assert explicit.json()["field"] == "duration_s"


def test_the_documented_limits_are_the_servers(document: dict[str, Any]) -> None:
    duration = document["components"]["schemas"]["ContinueRequest"]["properties"]["duration_s"]
    assert {"type": "number", "minimum": 0.02, "maximum": 2.0} in duration["anyOf"]


@pytest.mark.parametrize(
    ("schema", "field", "omitted"),
    [
        ("ContinueRequest", "duration_s", 2.0),  # MUSICGEN_MAX_DURATION_S, below the usual 10
        ("ContinueRequest", "prompt_duration_s", 3.0),  # MUSICGEN_WINDOW_S - 1
        ("GenerateRequest", "duration_s", 2.0),  # MUSICGEN_MAX_JOB_DURATION_S
        ("ContinueStreamRequest", "duration_s", 2.0),
    ],
    ids=["continue", "prompt", "job", "stream"],
)
def test_the_document_says_what_an_omitted_duration_means_here(
    document: dict[str, Any], schema: str, field: str, omitted: float
) -> None:
    assert document["components"]["schemas"][schema]["properties"][field]["default"] == omitted


def test_no_documented_default_lies_outside_its_bounds(document: dict[str, Any]) -> None:
    outside = []
    for name, schema in document["components"]["schemas"].items():
        for field, described in schema.get("properties", {}).items():
            default = described.get("default")
            if isinstance(default, bool) or not isinstance(default, int | float):
                continue
            for branch in described.get("anyOf", [described]):
                if branch.get("type") in ("number", "integer") and not (
                    branch.get("minimum", default) <= default <= branch.get("maximum", default)
                ):
                    outside.append(f"{name}.{field}: {default} outside {branch}")
    assert not outside


def test_a_job_with_no_duration_makes_this_servers_default(server: Server) -> None:
    with MusicGenClient(server.url) as client:
        accepted = client.submit(prompt="omitted duration", seed=1)
        done = client.wait(accepted.job_id, timeout_s=120)
    assert done.status == "succeeded", done.error
    assert done.result is not None and done.result.duration_s == pytest.approx(2.0, abs=0.01)


def test_every_declared_route_is_served_and_documented(document: dict[str, Any]) -> None:
    from musicgen_bento.api.endpoints import ENDPOINTS

    for endpoint in ENDPOINTS:
        operation = document["paths"][endpoint.path][endpoint.method.lower()]
        statuses = {str(endpoint.answer.status)} | {str(error.status_code) for error in endpoint.all_refusals()}
        assert set(operation["responses"]) == statuses, endpoint.name


def test_a_bentoml_method_that_is_not_declared_stops_the_service_at_start_up() -> None:
    from musicgen_bento.api.endpoints import check_served

    with pytest.raises(RuntimeError, match="declares"):
        check_served({"/continue", "/generate", "/jobs/status", "/jobs/cancel", "/health", "/undeclared"})
