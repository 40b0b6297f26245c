"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for judge tests, which can be told to misbehave.

`JudgeServer(reply=fn)` answers every POST to /v1/chat/completions with `fn(request_json)` as the assistant's
content. `server.script` is a list of actions consumed one per request before the default reply:
    ("status", code, headers)   an HTTP error (e.g. 500, or 429 with {"Retry-After": "1"})
    ("slow", seconds)           sleep, then reply normally (the client's timeout fires first)
    ("text", content)           reply with this content (e.g. garbage without a score)
    ("raw", bytes)              a 200 whose body is not chat-completions JSON
    ("echo_auth", code)         an HTTP error whose body echoes the request's Authorization header
Every request is recorded (headers, looked up case-insensitively, and JSON body) in `server.requests`.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def default_reply(body: dict) -> str:
    return "The response matches the references well. Rating: [[7]]"


class JudgeServer:
    def __init__(self, reply=default_reply):
        self.reply = reply
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with outer._lock:
                    # The parsed headers, not a dict: names are case-insensitive, and clients differ in case.
                    outer.requests.append({"path": self.path, "headers": self.headers, "raw": raw})
                    action = outer.script.pop(0) if outer.script else None
                try:
                    self._answer(action, raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

            def _answer(self, action, raw):
                if self.path != "/v1/chat/completions":
                    return self._send(404, b'{"error": "not found"}')
                if action and action[0] == "status":
                    return self._send(action[1], b'{"error": "scripted failure"}', action[2] if len(action) > 2 else {})
                if action and action[0] == "echo_auth":
                    return self._send(action[1], self.headers.get("Authorization", "").encode())
                if action and action[0] == "slow":
                    time.sleep(action[1])
                if action and action[0] == "raw":
                    return self._send(200, action[1])
                body = json.loads(raw)
                content = action[1] if action and action[0] == "text" else outer.reply(body)
                reply = {
                    "id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                }
                self._send(200, json.dumps(reply).encode())

            def _send(self, code, payload: bytes, headers=None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def count(self) -> int:
        return len(self.requests)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
