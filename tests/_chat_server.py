"""A real local HTTP server that speaks OpenAI's chat-completions protocol with scripted replies, for agent tests.

Each script item is one reply, served in order: a dict (sent as the JSON body; build it with `content_reply` or
`tool_reply`), a str or bytes (sent raw, for malformed replies) or `("sleep", seconds)` followed by the next item
(the server waits before sending it, to trigger a client timeout). Every request body is recorded, parsed.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATHS = ("/v1/chat/completions", "/chat/completions")


def _completion(message: dict, finish_reason: str, total_tokens: int | None) -> dict:
    body = {"id": f"chatcmpl-{time.monotonic_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": "scripted", "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]}
    if total_tokens is not None:
        body["usage"] = {"prompt_tokens": total_tokens // 2, "completion_tokens": total_tokens - total_tokens // 2,
                         "total_tokens": total_tokens}
    return body


def content_reply(text: str, total_tokens: int | None = 10) -> dict:
    """A plain assistant message; `total_tokens=None` leaves out `usage`."""
    return _completion({"role": "assistant", "content": text}, "stop", total_tokens)


def tool_reply(*calls: tuple[str, dict | str], total_tokens: int | None = 10, content: str | None = None) -> dict:
    """An assistant message calling tools: each call is (name, arguments), arguments a dict or a raw JSON string."""
    tool_calls = [{"id": f"call_{i}_{time.monotonic_ns()}", "type": "function",
                   "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
                  for i, (name, args) in enumerate(calls)]
    return _completion({"role": "assistant", "content": content, "tool_calls": tool_calls}, "tool_calls",
                       total_tokens)


class ChatServer(ThreadingHTTPServer):
    """Serves `script` in order; `requests` holds every parsed request body."""

    daemon_threads = True
    block_on_close = False  # a handler still sleeping (timeout tests) must not hold up shutdown

    def __init__(self, script: list):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = list(script)
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def next_reply(self):
        with self.lock:
            if not self.script:
                return 500, b'{"error": {"message": "script exhausted"}}'
            item = self.script.pop(0)
            if isinstance(item, tuple) and item[0] == "sleep":
                time.sleep(item[1])
                item = self.script.pop(0) if self.script else content_reply("late")
        if isinstance(item, dict):
            return 200, json.dumps(item).encode()
        return 200, item.encode() if isinstance(item, str) else item


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path not in PATHS:
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        self.server.requests.append(json.loads(body))
        self._send(*self.server.next_reply())

    def _send(self, status: int, body: bytes):
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def chat_server(script: list):
    """Yields (server, base_url) for a server in a daemon thread serving `script`; shuts it down after."""
    server = ChatServer(script)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()
