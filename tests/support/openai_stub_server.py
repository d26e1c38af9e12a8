"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for tests.

The test passes `reply(body, call_number) -> Reply`; `call_number` counts earlier requests whose
last message had the same content, so a script can fail a request once and answer its retry.
Every request body is recorded in `server.requests`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    content: str | None = None  # a chat completion with this text (status 200)
    status: int = 200
    raw: str | None = None  # a raw body instead (malformed JSON, error documents)
    delay_s: float = 0.0
    finish_reason: str = "stop"
    completion_tokens: int = 7
    headers: dict[str, str] = field(default_factory=dict)


def completion_document(content: str, finish_reason: str = "stop", completion_tokens: int = 7) -> dict:
    return {
        "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 10, "completion_tokens": completion_tokens,
                  "total_tokens": 10 + completion_tokens},
    }


class StubServer:
    def __init__(self, reply: Callable[[dict, int], Reply]) -> None:
        self.reply = reply
        self.requests: list[dict] = []
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                key = body.get("messages", [{}])[-1].get("content", "")
                with server.lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "authorization": self.headers.get("authorization")})
                    call = server.calls[key]
                    server.calls[key] += 1
                answer = server.reply(body, call)
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                if answer.raw is not None:
                    payload = answer.raw.encode()
                elif answer.status == 200:
                    payload = json.dumps(completion_document(answer.content or "", answer.finish_reason,
                                                             answer.completion_tokens)).encode()
                else:
                    payload = json.dumps({"error": {"message": f"stub error {answer.status}"}}).encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a slow reply

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
