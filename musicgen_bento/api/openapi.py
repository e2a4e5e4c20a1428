"""The OpenAPI 3.1 document served at `/docs.json`, made from the declared endpoints (`endpoints`)
and the pydantic models their bodies and answers are validated with, so it lists every route the
service answers with every answer it gives.

BentoML generates a document for its `@bentoml.api` methods only, drops `null` from optional
fields, declares 3.0.2 while writing 3.1's numeric `exclusiveMinimum`, and knows nothing of the
other routes or of the service's error answers. pydantic writes JSON Schema 2020-12, OpenAPI 3.1's
dialect. BentoML's infrastructure routes (`/healthz`, `/livez`, `/readyz`, `/metrics`) are kept
as BentoML describes them. The limits that come from settings are written in, so that every
request the document allows is one this server accepts.
"""

from __future__ import annotations

import copy
import inspect
import re
from typing import Any

from pydantic import BaseModel

from ..errors import MusicGenError, RetryLater
from ..render import duration_limits
from ..schemas import GenerationOptions
from ..settings import Settings
from .endpoints import ENDPOINTS, Answer, Endpoint, Parameter

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
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
_INFRASTRUCTURE = ("/healthz", "/livez", "/readyz", "/metrics")


def openapi_document(bentoml_document: dict[str, Any], title: str, version: str, settings: Settings) -> dict[str, Any]:
    """The service's OpenAPI 3.1 document; `bentoml_document` is BentoML's, for its infrastructure routes."""
    document = _Document(settings)
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = document.operation(endpoint)
    for path, item in bentoml_document.get("paths", {}).items():
        if path in _INFRASTRUCTURE:
            paths[path] = copy.deepcopy(item)
    built: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": bentoml_document.get("info", {}).get("description", ""),
        },
        "paths": paths,
        "components": {"schemas": document.schemas},
    }
    if settings.api_keys_file is not None:
        built["components"]["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key: musicgen-bento keys add NAME."}
        }
        built["security"] = [{"apiKey": []}]
    return built


class _Document:
    """Builds the operations and the component schemas they refer to."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}

    def operation(self, endpoint: Endpoint) -> dict[str, Any]:
        operation: dict[str, Any] = {"operationId": endpoint.name, "summary": endpoint.summary}
        if endpoint.description:
            operation["description"] = endpoint.description
        if endpoint.parameters:
            operation["parameters"] = [_parameter(parameter) for parameter in endpoint.parameters]
        if endpoint.body is not None:
            operation["requestBody"] = {"required": True, "content": self._body(endpoint)}
        operation["responses"] = {str(endpoint.answer.status): self._answer(endpoint.answer)}
        keys_required = self.settings.api_keys_file is not None
        operation["responses"].update(_refusals(endpoint.all_refusals(keys_required)))
        if keys_required and endpoint.public:
            operation["security"] = []  # the document's default asks for a key; these routes do not
        return operation

    def _body(self, endpoint: Endpoint) -> dict[str, Any]:
        if endpoint.body == "multipart":
            form = {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
            return {"multipart/form-data": {"schema": form}}
        assert endpoint.body is not None
        reference = self._reference(endpoint.body, "validation")
        self.schemas[endpoint.body.__name__].update(endpoint.body_rules)
        if endpoint.body_bounds:
            reference = self._bounded(endpoint, endpoint.body.__name__)
        return {"application/json": {"schema": reference}}

    def _answer(self, answer: Answer) -> dict[str, Any]:
        described: dict[str, Any] = {"description": answer.description}
        if answer.model is not None:
            described["content"] = {"application/json": {"schema": self._reference(answer.model, "serialization")}}
        else:
            described["content"] = {media: {"schema": answer.event or _media_schema(media)} for media in answer.media}
        if answer.headers:
            described["headers"] = {
                name: {"description": text, "schema": {"type": "string"}} for name, text in answer.headers.items()
            }
        return described

    def _reference(self, model: type[BaseModel], mode: str) -> dict[str, str]:
        name = model.__name__
        if name not in self.schemas:
            generated = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)  # type: ignore[arg-type]
            for nested, schema in generated.pop("$defs", {}).items():
                self.schemas.setdefault(nested, schema)
            self.schemas[name] = self._with_limits(model, generated)
        return {"$ref": f"#/components/schemas/{name}"}

    def _bounded(self, endpoint: Endpoint, base: str) -> dict[str, str]:
        """A copy of the body's schema with the route's narrower bounds, named for the route."""
        name = "".join(part.capitalize() for part in endpoint.name.split("_")) + "Request"
        schema = copy.deepcopy(self.schemas[base])
        schema["title"] = name
        schema["description"] = f"Body of {endpoint.method} {endpoint.path}: {base}'s, within its bounds."
        for field, bounds in endpoint.body_bounds.items():
            schema["properties"][field].update(bounds)
        self.schemas[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    def _with_limits(self, model: type[BaseModel], schema: dict[str, Any]) -> dict[str, Any]:
        """`schema` with this server's limits and the value an omitted field takes under them."""
        if not issubclass(model, GenerationOptions):
            return schema
        for field, limit in duration_limits(model, self.settings).items():
            described = schema["properties"][field]
            # An optional number is `anyOf: [number, null]`; the bound belongs to the number.
            for branch in described.get("anyOf", [described]):
                if branch.get("type") == "number":
                    branch["maximum"] = limit.maximum
            described["default"] = limit.default
        if "webhook_url" in schema["properties"]:
            self._webhook_hosts(schema["properties"]["webhook_url"])
        return schema

    def _webhook_hosts(self, described: dict[str, Any]) -> None:
        """`webhook_url` as this server takes it: only to its allowed hosts, and not at all without them."""
        allowed = self.settings.webhook_allowed_hosts
        for branch in described.get("anyOf", [described]):
            if branch.get("type") != "string":
                continue
            if not allowed:
                branch["not"] = {}  # no string is accepted: the server sends no webhooks
                continue
            names = "|".join(
                r"[^/:@?#]+\." + re.escape(entry[2:]) if entry.startswith("*.") else re.escape(entry)
                for entry in allowed
            )
            branch["pattern"] = rf"^https?://({names})(:[0-9]+)?([/?#]\S*)?$"


def _refusals(refusals: tuple[type[MusicGenError], ...]) -> dict[str, Any]:
    """Each status the refusals answer with, described by the error classes' own docstrings."""
    answers: dict[str, Any] = {}
    for refusal in sorted(refusals, key=lambda error: error.status_code):
        status = str(refusal.status_code)
        answer = answers.setdefault(
            status,
            {"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        )
        answer["description"] = f"{answer['description']} {_described(refusal)}".strip()
        if issubclass(refusal, RetryLater):
            answer["headers"] = _RETRY_AFTER
    return answers


def _described(error: type[MusicGenError]) -> str:
    return " ".join(inspect.cleandoc(error.__doc__ or error.__name__).split())


def _parameter(parameter: Parameter) -> dict[str, Any]:
    return {
        "name": parameter.name,
        "in": parameter.where,
        "required": parameter.where == "path",
        "description": parameter.description,
        "schema": dict(parameter.schema),
    }


def _media_schema(media: str) -> dict[str, str]:
    if media == "application/json":
        return {"type": "object"}
    return {"type": "string"} if media.startswith("text/") else {"type": "string", "format": "binary"}
