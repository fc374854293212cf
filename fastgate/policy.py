"""Decision stage: given who calls which function with what, answer allow / deny / approve.

This is the stage's interface. The data path asks `decide()` once per call and acts on the
returned value; it never raises for "no". The full rule engine (groups, argument conditions,
compiled tables) replaces `Policy` behind the same interface.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    effect: str            # "allow" | "deny" | "approve"
    rule: str | None       # the rule that decided, None when no rule matched
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"


ALLOW_NAMED = Decision("allow", None, "function is named in the config")


class Policy:
    """For now a function is callable exactly when the config names it (the catalog resolved it)."""

    @classmethod
    def from_config(cls, config) -> "Policy":
        return cls()

    def decide(self, function: str, context: object = None) -> Decision:
        return ALLOW_NAMED
