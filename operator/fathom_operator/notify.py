"""Notifications: a recipe's chosen events, posted as Slack-compatible JSON (`{"text": ...}`) to the
webhooks the admin configured.

- Webhooks are the admin's (Helm `notifications.webhooks`): each URL comes from a Secret mounted as
  a file, `<directory>/<name>/url`, read at send time (a rotated Secret is picked up). Recipes never
  name a URL; `spec.notify` only picks events and, optionally, webhooks by name.
- Events: the plan's Event reasons mapped to four notification events (REASONS).
- Delivery never blocks a reconcile: `notify()` only queues; one background thread posts with a
  timeout and bounded retries (backoff doubling), then drops the message with a log line and a
  metric. No log line carries a URL or anything credential-like (the URL is a bearer secret for
  Slack-style webhooks).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import typing
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fathom_jobs.redact import redact

from .actions import Event
from .api.recipe import DEFAULT_NOTIFY_EVENTS, NotifyEvent

EVENTS: tuple[str, ...] = typing.get_args(NotifyEvent)
DEFAULT_EVENTS = DEFAULT_NOTIFY_EVENTS  # `notify: {}` without `events`
REASONS = {"StageFailed": "StageFailed", "BudgetExceeded": "BudgetExceeded", "RecipeSucceeded": "Succeeded",
           "RecipeFailed": "Failed", "Invalid": "Failed"}  # plan Event reason -> notification event
QUEUE_LIMIT = 1000
log = logging.getLogger("fathom.notify")


@dataclass(frozen=True)
class Webhook:
    name: str
    url_file: Path

    def url(self) -> str:
        return self.url_file.read_text().strip()


def load_webhooks(directory: str | Path | None) -> list[Webhook]:
    """`<directory>/<name>/url` for each configured webhook (none when the directory is missing)."""
    root = Path(directory) if directory else None
    if root is None or not root.is_dir():
        return []
    return [Webhook(d.name, d / "url") for d in sorted(root.iterdir())
            if not d.name.startswith(".") and (d / "url").is_file()]


def wanted(notify: Any, reason: str) -> str | None:
    """The notification event for a plan event under a recipe's `spec.notify`, or None."""
    kind = REASONS.get(reason)
    if kind is None or not isinstance(notify, Mapping):
        return None
    events = notify.get("events", DEFAULT_EVENTS)
    return kind if isinstance(events, (list, tuple)) and kind in events else None


def _hide(text: str, url: str) -> str:
    """An error's text without the URL (or its host and path) and anything credential-like."""
    for secret in {url, url.split("?", 1)[0], *url.split("://", 1)[1:]}:
        if secret:
            text = text.replace(secret, "<webhook url>")
    return redact(text)[:300]


class Notifier:
    def __init__(self, webhooks: list[Webhook], *, tries: int = 3, timeout: float = 10.0, backoff: float = 2.0,
                 on_result: Callable[[str, str], None] | None = None) -> None:
        """`on_result(webhook, "sent" | "dropped")` after each message (the operator counts them)."""
        self.webhooks = {w.name: w for w in webhooks}
        self.tries, self.timeout, self.backoff = max(1, tries), timeout, backoff
        self.on_result = on_result
        self.queue: queue.Queue[tuple[Webhook, str] | None] = queue.Queue(QUEUE_LIMIT)
        self.thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self.thread.start()

    def notify(self, namespace: str, name: str, notify: Any, event: Event) -> None:
        """Queue the event for the recipe's webhooks if `spec.notify` asks for it; never blocks."""
        kind = wanted(notify, event.reason)
        if kind is None or not self.webhooks:
            return
        assert isinstance(notify, Mapping)
        names = notify.get("webhooks")
        targets = list(self.webhooks) if not isinstance(names, list) else [n for n in names if n in self.webhooks]
        text = redact(f"[{namespace}/{name}] {kind}: {event.message}")[:3000]
        for target in targets:
            try:
                self.queue.put_nowait((self.webhooks[target], text))
            except queue.Full:
                self._result(target, "dropped", "the notification queue is full")

    def close(self, timeout: float = 5.0) -> None:
        """Stop after what is queued (or after `timeout`)."""
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self.thread.join(timeout)

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            self._deliver(*item)

    def _deliver(self, webhook: Webhook, text: str) -> None:
        body = json.dumps({"text": text}).encode()
        why = ""
        for attempt in range(self.tries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            url = ""
            try:
                url = webhook.url()
                request = urllib.request.Request(url, data=body, method="POST",
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - the admin's URL
                    response.read(1024)
                self._result(webhook.name, "sent", "")
                return
            except urllib.error.HTTPError as exc:
                why = f"HTTP {exc.code}"
            except Exception as exc:  # noqa: BLE001 - any failure is retried, then dropped
                why = _hide(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", url)
            log.info("notification to webhook %s failed (try %d of %d): %s", webhook.name, attempt + 1,
                     self.tries, why)
        self._result(webhook.name, "dropped", why)

    def _result(self, webhook: str, result: str, why: str) -> None:
        if result == "dropped":
            log.warning("notification to webhook %s dropped: %s", webhook, why)
        if self.on_result is not None:
            self.on_result(webhook, result)
