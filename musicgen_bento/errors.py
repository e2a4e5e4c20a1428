"""The service's one exception hierarchy: every error a user can cause, with its HTTP status,
the request field at fault and a message that says what to change.

Plain Python, so every layer may raise them; `musicgen_bento.api.errors` turns them into responses.
"""

from __future__ import annotations

from typing import Any


class MusicGenError(Exception):
    """Base of every error the service reports to a client."""

    status_code = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        text = f"{self.field}: {self.message}" if self.field else self.message
        body: dict[str, Any] = {"error": text}
        if self.field:
            body["field"] = self.field
        return body


class InvalidParameter(MusicGenError):
    """A field missing, of the wrong type or out of range (the schema's or this server's limits); an unknown
    field; a body that is not valid JSON."""

    status_code = 400


class InvalidInput(MusicGenError):
    """A source file that cannot be used: a directory, a device, empty, truncated, not audio, shorter than one
    codec frame."""

    status_code = 422


class InputNotFound(MusicGenError):
    """A path in the request names no file."""

    status_code = 404


class InputForbidden(MusicGenError):
    """A path in the request lies outside the allowed input directories (MUSICGEN_INPUT_ROOTS)."""

    status_code = 403


class InputTooLarge(MusicGenError):
    """A source file over the configured size or duration limit."""

    status_code = 413


class Unauthorized(MusicGenError):
    """No API key, or one this server does not know: send 'Authorization: Bearer <key>'."""

    status_code = 401

    def __init__(self, message: str, *, presented: bool) -> None:
        super().__init__(message, field="Authorization")
        self.presented = presented

    def headers(self) -> dict[str, str]:
        # RFC 6750: a request that carried a key is told that key is invalid.
        return {"WWW-Authenticate": 'Bearer error="invalid_token"' if self.presented else "Bearer"}


class NotAllowedHere(MusicGenError):
    """A Host this server does not answer to, or a web page's Origin it does not serve (MUSICGEN_ALLOWED_HOSTS,
    MUSICGEN_CORS_ORIGINS)."""

    status_code = 403


class RetryLater(MusicGenError):
    """The server can't take the request now; `Retry-After` says when to try again."""

    status_code = 503
    default_retry_after_s = 5

    def __init__(self, message: str, *, retry_after_s: int | None = None, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = self.default_retry_after_s if retry_after_s is None else retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class NotReady(RetryLater):
    """The model is still loading (or failed to load)."""


class ShuttingDown(RetryLater):
    """The server is stopping; the request was not (or not completely) served."""


class JobNotFound(MusicGenError):
    """No job has this id (or it expired)."""

    status_code = 404


class NoSuchFile(MusicGenError):
    """No page or file of the service has this name."""

    status_code = 404


class Conflict(MusicGenError):
    """The request clashes with the state of a job: audio of an unfinished job, a reused idempotency key."""

    status_code = 409


class LimitReached(RetryLater):
    """An API key's limit is reached (generations at once, jobs queued, seconds of audio an hour)."""

    status_code = 429


class QueueFull(RetryLater):
    """The job queue holds its maximum."""

    default_retry_after_s = 30


class UnsupportedMediaType(MusicGenError):
    """A body of another media type than the route takes: JSON (multipart form data for uploads)."""

    status_code = 415


class OutputFull(MusicGenError):
    """The output directory's filesystem is full (or its quota or a file size limit reached); nothing was
    written."""

    status_code = 507


class OutputUnwritable(RetryLater):
    """The output directory cannot be written: missing permission, a read-only filesystem."""

    default_retry_after_s = 30


class GenerationCanceled(MusicGenError):
    """The caller's cancel check asked generation to stop."""

    status_code = 499


class ModelStoreError(MusicGenError):
    """A model could not be found, imported or loaded; raised at start-up and by the CLI."""


class MemoryBudgetError(MusicGenError):
    """The model cannot be served within the memory budget (MUSICGEN_MAX_MEMORY_MB); raised at start-up."""
