"""Structured JSON logs on stderr: one access line per call, and operational events.

Values come from the pipeline's own fields (ids, names, statuses, timings); headers and bodies
are never logged, and every line is scrubbed of the config's expanded secrets as a last guard.
"""
from __future__ import annotations

import sys
import time

import orjson

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Log:
    def __init__(self, level: str = "info", secrets: frozenset[str] = frozenset(), stream=None,
                 worker: int | None = None) -> None:
        self.level = _LEVELS[level]
        self.stream = stream or sys.stderr
        self.worker = worker
        self.set_secrets(secrets)

    @property
    def debug_enabled(self) -> bool:
        return self.level <= 10

    def set_secrets(self, secrets: frozenset[str]) -> None:
        self._secrets = tuple(s.encode() for s in secrets if len(s) >= 4)

    def _write(self, record: dict) -> None:
        line = orjson.dumps(record)
        for secret in self._secrets:
            if secret in line:
                line = line.replace(secret, b"[secret]")
        self.stream.write(line.decode() + "\n")
        self.stream.flush()

    def access(self, record: dict) -> None:
        record = {"ts": _now(), "log": "access", **record}
        if self.worker is not None:
            record["worker"] = self.worker
        self._write(record)

    def event(self, level: str, msg: str, **fields) -> None:
        if _LEVELS[level] < self.level:
            return
        record = {"ts": _now(), "level": level, "msg": msg, **fields}
        if self.worker is not None:
            record["worker"] = self.worker
        self._write(record)

    def info(self, msg: str, **fields) -> None:
        self.event("info", msg, **fields)

    def warning(self, msg: str, **fields) -> None:
        self.event("warning", msg, **fields)

    def error(self, msg: str, **fields) -> None:
        self.event("error", msg, **fields)


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
