"""Bounded work per request: a body cap per route, a per-key cap on concurrent expensive work.

- **Body caps.** JSON and form routes take at most ``PRIVACY_API_MAX_JSON_BYTES`` (64 KiB);
  only record uploads get ``PRIVACY_API_MAX_CONTENT_LENGTH``, only federated updates the update
  cap, and creating a federation room for its base64 public context. A declared length over
  the cap is refused with 413 before a byte of the body is read; a chunked body is cut off
  at the cap as it is read.
- **Concurrent expensive requests.** Queries, estimates (JSON and SQL) and uploads hold a slot
  of their key while they run; a key may hold ``PRIVACY_API_MAX_CONCURRENT_EXPENSIVE`` slots
  (2) per process, so one analyst cannot occupy every thread. Over it: 429 ``rate_limited``
  with ``Retry-After`` and ``details.reason = "concurrency"``; nothing was read or charged.
- **``Connection: close``** on an error response whose body was not read to the end, so a
  client refused from its headers cannot keep the connection busy with the rest of its body.
  (Under the waitress worker every body has been read before the app runs, and waitress
  refuses hop-by-hop headers from apps, so the header is only sent by other servers.)
"""

from __future__ import annotations

import threading
from collections import Counter

from flask import Flask, Response, g, request
from werkzeug.wsgi import LimitedStream

from ..runtime.config import Settings
from .auth import bearer_user
from .error_responses import error_body

# Rule suffixes (so the SQL routes count wherever they are added) of the expensive routes.
EXPENSIVE_SUFFIXES = ("/query", "/query/estimate", "/sql", "/sql/estimate", "/records")
RETRY_AFTER_SECONDS = 1
# Set in the WSGI environ by servers that read the whole body before calling the app
# (privacy_api.app.serving.WaitressWorker).
BODY_BUFFERED = "privacy_api.body_buffered"


class KeySlots:
    """Per-process counts of expensive requests in flight, per user."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._in_flight: Counter[int] = Counter()

    def acquire(self, user_id: int) -> bool:
        with self._lock:
            if self._in_flight[user_id] >= self.limit:
                return False
            self._in_flight[user_id] += 1
            return True

    def release(self, user_id: int) -> None:
        with self._lock:
            self._in_flight[user_id] -= 1
            if self._in_flight[user_id] <= 0:
                del self._in_flight[user_id]


def body_cap(settings: Settings, rule: str, method: str) -> int:
    if method == "POST" and rule.endswith("/records"):
        return settings.max_content_length
    if method == "POST" and rule.endswith("/updates"):
        return settings.max_update_bytes
    if method == "POST" and rule == "/v1/federations":
        # base64 grows the context by 4/3; the other fields fit in the JSON cap
        return settings.max_context_bytes * 4 // 3 + settings.max_json_bytes
    return settings.max_json_bytes


def init_work_limits(app: Flask, settings: Settings) -> None:
    slots = KeySlots(settings.max_concurrent_expensive)
    app.extensions["privacy_api_key_slots"] = slots

    @app.before_request
    def _limit_work() -> Response | None:
        rule = request.url_rule.rule if request.url_rule is not None else ""
        cap = body_cap(settings, rule, request.method)
        request.max_content_length = cap
        if request.content_length is not None and request.content_length > cap:
            return error_body(413, "payload_too_large",
                              f"this route takes bodies of at most {cap} bytes",
                              {"limit": cap, "content_length": request.content_length})
        if request.method == "POST" and rule.endswith(EXPENSIVE_SUFFIXES):
            user = bearer_user()
            if user is None:
                return None  # the view's auth check answers 401
            if not slots.acquire(user.id):
                resp = error_body(
                    429, "rate_limited",
                    f"at most {slots.limit} queries, estimates or uploads may run at once per key",
                    {"reason": "concurrency", "limit": slots.limit,
                     "retry_after": RETRY_AFTER_SECONDS})
                resp.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
                return resp
            g.key_slot = user.id
        return None

    @app.teardown_request
    def _release(_exc: BaseException | None) -> None:
        user_id = g.pop("key_slot", None)
        if user_id is not None:
            slots.release(user_id)

    @app.after_request
    def _close_unread(response: Response) -> Response:
        if response.status_code >= 400 and _body_left_unread():
            response.headers["Connection"] = "close"
        return response


def _body_left_unread() -> bool:
    # waitress has read every body in full before the app runs (and refuses a hop-by-hop
    # header from the app): nothing is left to cut off
    if request.environ.get(BODY_BUFFERED):
        return False
    length = request.content_length
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if not length and not chunked:
        return False
    # `stream` is a cached property: absent from __dict__ means nothing touched the body
    stream = request.__dict__.get("stream")
    if stream is None:
        return True
    try:
        if length is not None:
            return int(stream.tell()) < length
    except (AttributeError, OSError):
        return True
    return not (isinstance(stream, LimitedStream) and stream.is_exhausted)
