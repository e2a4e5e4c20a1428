"""Delivers jobs' webhooks, signed per the Standard Webhooks specification (the `standardwebhooks`
package): `webhook-id` (the same on every attempt at an event), `webhook-timestamp` and
`webhook-signature` (HMAC-SHA256 with `MUSICGEN_WEBHOOK_SECRET`), the job's view as the body.

Every replica runs a dispatcher. Each pass leases a job's webhook state in the queue before it
touches it (`JobQueue.lease_webhook`), so one replica delivers each event; a replica that dies
mid-delivery leaves its lease to run out, and another takes over, with the same `webhook-id`. A
failed delivery (refused, timed out, not 2xx) is retried with exponential backoff until
`MUSICGEN_WEBHOOK_RETRY_S` after the event. Redirects are not followed, the time allowed is short
(`MUSICGEN_WEBHOOK_TIMEOUT_S`), and the destination's host must still be allowed when it is called.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from ..jobs.model import Job, JobQueue
from ..jobs.webhooks import after_failure, create_due, host_allowed, pending, still_open
from ..settings import Settings

logger = logging.getLogger("musicgen_bento")

# How long a replica holds a job's webhook while it delivers: longer than one pass's deliveries take.
LEASE_S = 60.0
_PASS_S = 0.5
_USER_AGENT = f"musicgen-bento/{version('musicgen-bento')} (webhooks)"


class WebhookDispatcher:
    """Creates and delivers the due events of every job with a webhook, on a thread of its own."""

    def __init__(
        self, queue: JobQueue, settings: Settings, body_of: Callable[[Job], str], lease_s: float = LEASE_S
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.body_of = body_of
        self.lease_s = lease_s
        self.holder = f"webhooks-{uuid.uuid4().hex[:12]}"
        self._signer = Webhook(settings.webhook_secret.get_secret_value()) if settings.webhook_allowed_hosts else None
        # Redirects are not followed: a receiver cannot send a signed delivery to a host not allowed.
        self._http = httpx.Client(
            timeout=httpx.Timeout(settings.webhook_timeout_s),
            follow_redirects=False,
            headers={"User-Agent": _USER_AGENT},
        )
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="musicgen-webhooks", daemon=True)

    def start(self) -> None:
        if self._signer is not None:  # no allowed hosts: no job can have a webhook
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.settings.webhook_timeout_s + 5)
        self._http.close()

    def _loop(self) -> None:
        while not self._stopping.wait(_PASS_S):
            try:
                self.run_once()
            except Exception:  # the queue's store may be briefly unreachable; the next pass retries
                logger.exception("webhook deliveries: a pass failed; retrying")

    def run_once(self) -> None:
        """One pass: every job whose webhook has work, leased, advanced and saved."""
        for job_id in self.queue.webhook_jobs():
            if self._stopping.is_set():
                return
            job = self.queue.lease_webhook(job_id, self.holder, self.lease_s)
            if job is None or job.webhook is None:
                continue
            state = copy.deepcopy(job.webhook)
            try:
                self._advance(job, state)
            finally:
                self.queue.save_webhook(job_id, self.holder, state, still_open(job, state))

    def _advance(self, job: Job, state: dict[str, Any]) -> None:
        now = time.time()
        create_due(job, state, self.body_of, now)
        for event, delivery in state["deliveries"].items():
            if pending(delivery) and delivery["next_at"] is not None and delivery["next_at"] <= now:
                self._attempt(job.job_id, event, state["url"], delivery)

    def _attempt(self, job_id: str, event: str, url: str, delivery: dict[str, Any]) -> None:
        """One attempt at a delivery; its state records the outcome and when to try again."""
        assert self._signer is not None
        delivery["attempts"] += 1
        now = time.time()
        host = urlsplit(url).hostname or ""
        if not host_allowed(host.rstrip("."), self.settings.webhook_allowed_hosts):
            delivery["last_error"] = f"{host!r} is no longer in MUSICGEN_WEBHOOK_ALLOWED_HOSTS"
            delivery["gave_up_at"], delivery["next_at"] = now, None
            return
        sent_at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery["id"],
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._signer.sign(delivery["id"], sent_at, delivery["body"]),
        }
        try:
            response = self._http.post(url, content=delivery["body"].encode(), headers=headers)
            delivery["last_status"], delivery["last_error"] = response.status_code, None
            if 200 <= response.status_code < 300:
                delivery["delivered_at"], delivery["next_at"] = now, None
                logger.info("job %s: webhook %s delivered (attempt %d)", job_id, event, delivery["attempts"])
                return
            delivery["last_error"] = f"the receiver answered {response.status_code}"
        except httpx.HTTPError as error:
            delivery["last_error"] = f"{type(error).__name__}: {error}"[:300]
        after_failure(delivery, now, self.settings.webhook_retry_s)
        logger.info(
            "job %s: webhook %s failed (attempt %d: %s)%s",
            job_id,
            event,
            delivery["attempts"],
            delivery["last_error"],
            "; given up" if delivery["gave_up_at"] else "",
        )
