"""A job's webhook as the job stores it: where its events go, which events, and each delivery's
state, kept with the job in the queue (SQLite or Redis) so that it survives a restart and is seen
by every replica. `api.webhooks` delivers them; this module decides what is due.

The state is plain JSON on the job (`Job.webhook`):

    {"url": ..., "events": [...], "deliveries": {event: {"id", "body", "attempts", "created_at",
     "next_at", "last_status", "last_error", "delivered_at", "gave_up_at"}}, "lease": {...}}

An event's delivery is created once, when the job is first seen to have reached it, with its body
(the job's view then) and its id: every attempt sends the same bytes under the same `webhook-id`.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidParameter
from ..schemas import GenerateRequest, WebhookDelivery, WebhookView
from ..settings import Settings
from .model import Job, JobStatus

EVENTS = ("started", "succeeded", "failed", "canceled")
# The first retry comes this long after a failed attempt; each later one four times later, up to an hour.
_FIRST_RETRY_S = 5.0
_LONGEST_WAIT_S = 3600.0


def check_webhook_url(url: str, settings: Settings) -> None:
    """Refuses a `webhook_url` this server will not call, naming the field and what to change."""
    if not settings.webhook_allowed_hosts:
        raise InvalidParameter(
            "this server sends no webhooks (MUSICGEN_WEBHOOK_ALLOWED_HOSTS is empty): follow the job's events "
            "(GET /jobs/{job_id}/events) instead, or ask the operator to allow your host",
            field="webhook_url",
        )
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidParameter(f"must be an http or https URL; got {url[:200]!r}", field="webhook_url")
    if parts.username or parts.password:
        raise InvalidParameter("must carry no user name or password; the deliveries are signed", field="webhook_url")
    if not host_allowed(host, settings.webhook_allowed_hosts):
        raise InvalidParameter(
            f"its host {host!r} is not one this server sends webhooks to (MUSICGEN_WEBHOOK_ALLOWED_HOSTS)",
            field="webhook_url",
        )


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether `host` is listed: exactly (an address as written), or under a '*.domain' entry."""
    host = host.lower()
    with contextlib.suppress(ValueError):  # an address is compared as Python writes it
        host = str(ipaddress.ip_address(host.strip("[]")))
    return host in allowed or any(entry.startswith("*.") and host.endswith(entry[1:]) for entry in allowed)


def webhook_of(request: GenerateRequest) -> dict[str, Any] | None:
    """The state a new job starts with: its URL and events, nothing delivered."""
    if request.webhook_url is None:
        return None
    return {"url": request.webhook_url, "events": list(request.webhook_events or EVENTS), "deliveries": {}}


def reached(job: Job, event: str) -> bool:
    """Whether the job has reached `event`: started once a worker took it, the others at its end."""
    if event == "started":
        return job.started_at is not None
    return job.status.value == event


def create_due(job: Job, state: dict[str, Any], body_of: Callable[[Job], str], now: float) -> None:
    """Adds a delivery for every asked-for event the job has reached, in the events' order."""
    deliveries = state.setdefault("deliveries", {})
    for event in EVENTS:
        if event in state["events"] and event not in deliveries and reached(job, event):
            deliveries[event] = {
                "id": f"msg_{job.job_id}_{event}",
                "body": body_of(job),
                "attempts": 0,
                "created_at": now,
                "next_at": now,
                "last_status": None,
                "last_error": None,
                "delivered_at": None,
                "gave_up_at": None,
            }


def pending(delivery: dict[str, Any]) -> bool:
    return delivery["delivered_at"] is None and delivery["gave_up_at"] is None


def after_failure(delivery: dict[str, Any], now: float, retry_s: float) -> None:
    """Schedules the next attempt with exponential backoff, or gives up past the retry time."""
    wait = min(_FIRST_RETRY_S * 4 ** (delivery["attempts"] - 1), _LONGEST_WAIT_S)
    if now + wait > delivery["created_at"] + retry_s:
        delivery["gave_up_at"], delivery["next_at"] = now, None
    else:
        delivery["next_at"] = now + wait


def still_open(job: Job, state: dict[str, Any]) -> bool:
    """Whether the webhook has more to do: the job may still reach events, or a delivery is pending."""
    if job.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED):
        return True
    deliveries = state.get("deliveries", {})
    due = [event for event in state["events"] if reached(job, event)]
    return any(event not in deliveries or pending(deliveries[event]) for event in due)


def view_of(state: dict[str, Any]) -> WebhookView:
    """The webhook as GET /jobs/{job_id} shows it (never its bodies)."""

    def iso(timestamp: float | None) -> str | None:
        return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")

    deliveries = [
        WebhookDelivery(
            event=event,
            webhook_id=delivery["id"],
            attempts=delivery["attempts"],
            last_status=delivery["last_status"],
            last_error=delivery["last_error"],
            delivered_at=iso(delivery["delivered_at"]),
            next_attempt_at=iso(delivery["next_at"]) if pending(delivery) else None,
            gave_up_at=iso(delivery["gave_up_at"]),
        )
        for event, delivery in state.get("deliveries", {}).items()
    ]
    return WebhookView(url=state["url"], events=state["events"], deliveries=deliveries)
