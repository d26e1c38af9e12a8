"""Notifications: Slack-compatible JSON to the admin's webhooks, retried, never logging the URL."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fathom_operator.actions import Event
from fathom_operator.notify import Notifier, load_webhooks, wanted
from tests.support.operator_harness import Cluster, apply, operator, small_recipe, until

SECRET_PATH = "/services/T000/B000/s3cr3tT0ken"


class Hook:
    """A webhook on 127.0.0.1 answering `codes` in turn (then 200), recording every JSON body."""

    def __init__(self, codes: list[int] | None = None) -> None:
        self.codes, self.bodies, self.hits = list(codes or []), [], 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                hook.hits += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = hook.codes.pop(0) if hook.codes else 200
                if code == 200:
                    hook.bodies.append((self.path, self.headers["Content-Type"], json.loads(body)))
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def hook():
    found = Hook()
    yield found
    found.close()


def webhooks(tmp_path: Path, **urls: str) -> list:
    for name, url in urls.items():
        (tmp_path / "hooks" / name).mkdir(parents=True)
        (tmp_path / "hooks" / name / "url").write_text(url + "\n")
    return load_webhooks(tmp_path / "hooks")


def wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_events_map_to_the_four_notifications_and_the_default_is_stage_failed_and_failed():
    assert wanted(None, "StageFailed") is None  # no spec.notify: nothing
    assert [wanted({}, r) for r in ("StageFailed", "RecipeFailed", "Invalid", "RecipeSucceeded", "BudgetExceeded")] \
        == ["StageFailed", "Failed", "Failed", None, None]
    everything = {"events": ["StageFailed", "BudgetExceeded", "Succeeded", "Failed"]}
    assert [wanted(everything, r) for r in ("RecipeSucceeded", "BudgetExceeded", "AttemptFailed", "JobCreated")] \
        == ["Succeeded", "BudgetExceeded", None, None]


def test_a_notification_is_delivered_as_slack_json(hook, tmp_path):
    sent = []
    notifier = Notifier(webhooks(tmp_path, team=hook.url), on_result=lambda w, r: sent.append((w, r)))
    notifier.notify("ml", "r", {"events": ["Failed"]}, Event("Warning", "RecipeFailed", "stage sft failed after 3 attempts"))
    notifier.notify("ml", "r", {"events": ["Failed"]}, Event("Normal", "RecipeSucceeded", "not asked for"))
    notifier.close()
    assert hook.bodies == [(SECRET_PATH, "application/json", {"text": "[ml/r] Failed: stage sft failed after 3 attempts"})]
    assert sent == [("team", "sent")]


def test_a_recipe_may_pick_webhooks_by_name(hook, tmp_path):
    other = Hook()
    try:
        notifier = Notifier(webhooks(tmp_path, team=hook.url, oncall=other.url))
        notifier.notify("ml", "r", {"webhooks": ["oncall", "unknown"]}, Event("Warning", "StageFailed", "x"))
        notifier.close()
        assert (len(hook.bodies), len(other.bodies)) == (0, 1)
    finally:
        other.close()


def test_a_500_is_retried_then_succeeds_and_the_url_is_never_logged(tmp_path, caplog):
    hook = Hook(codes=[500, 503])
    caplog.set_level(logging.INFO, logger="fathom.notify")
    try:
        notifier = Notifier(webhooks(tmp_path, team=hook.url), backoff=0.05)
        notifier.notify("ml", "r", {}, Event("Warning", "StageFailed", "sft failed"))
        notifier.close()
    finally:
        hook.close()
    assert hook.hits == 3 and len(hook.bodies) == 1
    assert "HTTP 500" in caplog.text and "HTTP 503" in caplog.text
    assert "s3cr3tT0ken" not in caplog.text and "127.0.0.1" not in caplog.text


def test_after_the_last_try_it_is_dropped_with_a_log_line_and_no_url(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fathom.notify")
    dead = "http://127.0.0.1:9/hooks/s3cr3tT0ken?token=abc"  # discard port: refused
    results = []
    notifier = Notifier(webhooks(tmp_path, team=dead, typo="htp://s3cr3tT0ken.example"), backoff=0.01, timeout=2,
                        on_result=lambda w, r: results.append((w, r)))
    started = time.monotonic()
    notifier.notify("ml", "r", {}, Event("Warning", "RecipeFailed", "x"))
    assert time.monotonic() - started < 0.1  # queued, not delivered inline
    notifier.close(timeout=10)
    assert sorted(results) == [("team", "dropped"), ("typo", "dropped")]
    assert "dropped" in caplog.text
    assert "s3cr3tT0ken" not in caplog.text and "abc" not in caplog.text


@pytest.mark.kmock(cls=Cluster)
@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_the_operator_notifies_what_the_recipe_asks_for(cluster, config, hook, tmp_path):
    config.notifier = Notifier(webhooks(tmp_path, team=hook.url))
    doc = small_recipe(notify={"events": ["Failed"]})
    doc["spec"]["stages"][1]["data"] = "corpuss"
    async with operator(config):
        await apply(cluster, doc)
        await until(lambda: hook.bodies, what="a notification")
    config.notifier.close()
    (_, _, body), = hook.bodies
    assert body["text"].startswith("[ml/r] Failed: spec.stages[1].data: no stage named")
