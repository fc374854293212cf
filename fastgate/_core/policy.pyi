"""Public face of the compiled policy core; the pure-Python twin is policy_py."""
from typing import Any

from fastgate._core.policy_py import MAX_MATCH_CHARS as MAX_MATCH_CHARS
from fastgate._core.policy_py import MAX_WALK_DEPTH as MAX_WALK_DEPTH
from fastgate._core.policy_py import MISSING as MISSING
from fastgate._core.policy_py import CallContext as CallContext
from fastgate._core.policy_py import CondSpec as CondSpec
from fastgate._core.policy_py import Decision as Decision
from fastgate._core.policy_py import RuleSpec as RuleSpec
from fastgate._core.policy_py import Tables as Tables

__all__ = ["CallContext", "CondSpec", "Decision", "Engine", "MISSING", "RuleSpec", "Tables",
           "MAX_MATCH_CHARS", "MAX_WALK_DEPTH"]

class Engine:
    def __init__(self, tables: Tables) -> None: ...
    def decide(self, function: str, ctx: Any) -> Decision: ...
