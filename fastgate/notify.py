"""Webhook notifications for approvals (`approvals.notify`): payloads, signing, delivery.

Reviewers learn about a new approval, and about its outcome, from a POST to `url`. Delivery
must never slow a call down, and a receiver that is down must not lose the message at once:

- `Notifier.post(payload)` only appends to a bounded in-memory queue (default 1,000); when the
  queue is full the oldest message is dropped, with a log line (a stuck receiver costs memory,
  never latency).
- One background task delivers in order, one request at a time, each attempt bounded by
  `timeout`; a failed attempt (connection error, timeout, non-2xx) is retried after 0.5 s, 1 s,
  2 s, 4 s (`tries` = 5 attempts in all), then the message is dropped with a log line.
- Each delivery carries `X-Fastgate-Timestamp` (unix seconds) and, with a secret,
  `X-Fastgate-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>`. The JSON payload
  also carries `ts`, so the signed body pins the time (a receiver can refuse old replays).

The HTTP client is a few lines over h11 (already a dependency): HTTP/1.1, `Connection: close`,
http or https (system trust store), no redirects. Queued messages are lost on restart: the store
holds the truth, the webhook is a courtesy.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import ssl
import time
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import h11
import orjson

__all__ = ["Notifier", "Target", "http_post", "json_payload", "sign", "slack_payload"]

USER_AGENT = "fastgate-webhook/1"


class Target(NamedTuple):
    url: str
    secret: bytes | None
    format: str            # "json" | "slack"

    @classmethod
    def from_config(cls, notify: Any) -> Target | None:
        """From `config.approvals.notify` (None when not configured)."""
        if notify is None:
            return None
        secret = notify.secret.get_secret_value().encode() if notify.secret is not None else None
        return cls(str(notify.url), secret, notify.format)


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def json_payload(event: str, view: dict[str, Any]) -> dict[str, Any]:
    """The `format: json` body: flat, stable keys a receiver can route on."""
    caller = view.get("caller") or {}
    return {"event": event, "approval_id": view.get("id"), "session": view.get("session"),
            "function": view.get("function"), "caller": caller.get("subject"), "rule": view.get("rule"),
            "state": view.get("state"), "deadline": view.get("deadline"), "quorum": view.get("quorum"),
            "approvals": [a.get("reviewer") for a in view.get("approvals") or ()],
            "reviewer": view.get("decided_by"), "summary": view.get("summary"), "ts": _now_ts()}


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(event: str, view: dict[str, Any]) -> dict[str, Any]:
    """The `format: slack` body: one readable `text` (Slack incoming-webhook shape)."""
    caller = (view.get("caller") or {}).get("subject")
    head = f"{view.get('function')} called by {caller} (rule {view.get('rule')})"
    if event == "approval.requested":
        summary = orjson.dumps(view.get("summary")).decode()
        if len(summary) > 600:
            summary = summary[:600] + "..."
        text = (f"fastgate: approval {view.get('id')} requested: {head}. "
                f"Quorum {view.get('quorum')}, deadline {view.get('deadline')}.\n"
                f"Request: {summary}\n"
                f"Decide: fastgate admin approvals approve {view.get('id')} --reviewer NAME "
                f"(or deny {view.get('id')} --reviewer NAME)")
    else:
        by = f" by {view.get('decided_by')}" if view.get("decided_by") else ""
        text = f"fastgate: approval {view.get('id')} {view.get('state')}{by}: {head}."
    return {"text": _slack_escape(text)}


def _now_ts() -> str:
    ms = int(time.time() * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


async def http_post(url: str, body: bytes, headers: list[tuple[str, str]], *, timeout: float = 5.0,
                    ssl_context: ssl.SSLContext | None = None) -> int:
    """POST `body` to `url` and return the response status (the body is not read past the head)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    async def exchange() -> int:
        ctx = None
        if parts.scheme == "https":
            ctx = ssl_context or ssl.create_default_context()
        reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=ctx)
        try:
            conn = h11.Connection(h11.CLIENT)
            head = [("host", parts.netloc), ("user-agent", USER_AGENT), ("content-type", "application/json"),
                    ("content-length", str(len(body))), ("connection", "close"), *headers]
            writer.write(conn.send(h11.Request(method="POST", target=target, headers=head)))
            writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    return int(event.status_code)
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionError("the receiver closed the connection without an answer")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.wait_for(exchange(), timeout)


class Notifier:
    """A bounded queue of webhook messages and the one task that delivers them (see module doc)."""

    def __init__(self, target: Target, *, log: Any = None, max_queue: int = 1000, tries: int = 5,
                 backoff: float = 0.5, timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.log = log
        self.tries = tries
        self.backoff = backoff
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._queue: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(maxlen=max_queue)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.stats = {"sent": 0, "failed": 0, "dropped": 0, "retries": 0}

    def start(self) -> Notifier:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="fastgate-approval-notify")
        return self

    async def close(self) -> None:
        """Stop at once: whatever is still queued is dropped (the store has it all)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def post(self, event: str, view: dict[str, Any]) -> None:
        """Queue a message; never blocks, never raises for delivery problems."""
        if len(self._queue) == self._queue.maxlen:
            dropped_event, dropped = self._queue[0]
            self.stats["dropped"] += 1
            self._log("warning", "approval webhook queue full: dropped the oldest message",
                      event=dropped_event, approval=dropped.get("id"))
        self._queue.append((event, view))      # a full deque drops its oldest item itself
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                event, view = self._queue.popleft()
                await self._deliver(event, view)

    async def _deliver(self, event: str, view: dict[str, Any]) -> None:
        target = self.target          # a reload may swap it; one message goes to one target
        build = slack_payload if target.format == "slack" else json_payload
        body = orjson.dumps(build(event, view))
        delay = self.backoff
        error = ""
        for attempt in range(1, self.tries + 1):
            headers = [("x-fastgate-timestamp", str(int(time.time())))]
            if target.secret is not None:
                headers.append(("x-fastgate-signature", sign(target.secret, body)))
            try:
                status = await http_post(target.url, body, headers, timeout=self.timeout,
                                         ssl_context=self.ssl_context)
                if 200 <= status < 300:
                    self.stats["sent"] += 1
                    return
                error = f"HTTP {status}"
            except (OSError, asyncio.TimeoutError, h11.ProtocolError, ValueError, ssl.SSLError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if attempt < self.tries:
                self.stats["retries"] += 1
                await asyncio.sleep(delay)
                delay *= 2
        self.stats["failed"] += 1
        self._log("error", "approval webhook failed; message dropped", event=event, approval=view.get("id"),
                  tries=self.tries, error=error)

    def _log(self, level: str, msg: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.event(level, msg, **fields)
