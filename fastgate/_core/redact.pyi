"""Public face of the compiled redaction core; the pure-Python twin is redact_py."""
from typing import Any, TypeAlias

from fastgate._core.redact_py import DEFAULT_MASK as DEFAULT_MASK
from fastgate._core.redact_py import MAX_DEPTH as MAX_DEPTH
from fastgate._core.redact_py import MAX_TOKEN as MAX_TOKEN
from fastgate._core.redact_py import STRING_WINDOW as STRING_WINDOW
from fastgate._core.redact_py import LongString as LongString
from fastgate._core.redact_py import Plan as Plan
from fastgate._core.redact_py import RedactionError as RedactionError
from fastgate._core.redact_py import TextRedactor as TextRedactor
from fastgate._core.redact_py import apply as apply
from fastgate._core.redact_py import escape as escape
from fastgate._core.redact_py import unescape as unescape

__all__ = ["DEFAULT_MASK", "MAX_DEPTH", "MAX_TOKEN", "STRING_WINDOW", "Engine", "JsonRedactor", "LongString", "Plan",
           "RedactionError", "TextRedactor", "apply", "escape", "unescape"]

Span: TypeAlias = tuple[int, int, int]

class Engine:
    plan: Plan
    impl: str
    def __init__(self, plan: Plan) -> None: ...
    def find(self, text: str, begin: int = 0, pem_open: bool = False) -> tuple[list[Span], bool]: ...
    def json(self, depth0: int = 0, roots: Any = None) -> JsonRedactor: ...
    def text(self) -> TextRedactor: ...
    def unescape_bytes(self, raw: bytes) -> bytes: ...
    def escape_bytes(self, body: bytes) -> bytes: ...

class JsonRedactor:
    def __init__(self, engine: Engine, depth0: int = 0, roots: Any = None) -> None: ...
    @property
    def masked(self) -> int: ...
    @property
    def kinds(self) -> dict[str, int]: ...
    def feed(self, data: bytes) -> bytes: ...
    def close(self) -> bytes: ...
