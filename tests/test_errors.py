"""Errors carry their status and a message naming the field; BentoML's own 4xx bodies are rewritten."""

from __future__ import annotations

import json

from musicgen_bento.api.errors import describe_validation_errors, error_response
from musicgen_bento.api.middleware import _rewrite_body
from musicgen_bento.errors import InvalidInput, NotReady


def test_error_response_names_the_field_and_keeps_the_status() -> None:
    response = error_response(InvalidInput("must be positive", field="duration_s"))
    assert response.status_code == 422
    assert json.loads(response.body) == {"error": "duration_s: must be positive", "field": "duration_s"}


def test_not_ready_says_when_to_retry() -> None:
    response = error_response(NotReady("loading", retry_after_s=7))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"


def test_validation_errors_become_one_sentence_per_field() -> None:
    errors = [
        {"type": "missing", "loc": ["audio_path"], "msg": "Field required"},
        {"type": "less_than_equal", "loc": ["top_p"], "msg": "Input should be less than or equal to 1"},
    ]
    assert describe_validation_errors(errors) == (
        "audio_path: is required; top_p: Input should be less than or equal to 1"
    )


def test_bentoml_list_wrapped_errors_are_unwrapped() -> None:
    assert _rewrite_body([{"error": "bad"}]) == {"error": "bad"}


def test_our_own_bodies_are_left_alone() -> None:
    assert _rewrite_body({"error": "audio_path: no file", "field": "audio_path"}) is None
