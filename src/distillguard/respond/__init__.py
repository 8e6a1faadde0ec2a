"""Respond in the request path: directives, online scoring, graduated actions, audit.

Depends only on earlier stages (config, signal rules, scoring calibration, ingest, store).
"""

from distillguard.respond._errors import (
    AuditError,
    DirectiveError,
    PolicyError,
    RespondError,
    StateStoreError,
)
from distillguard.respond.audit import AuditLog, query, verify
from distillguard.respond.directives import (
    Directive,
    DirectiveSet,
    UserAttrs,
    dry_run,
    load_directives,
)
from distillguard.respond.online import OnlineScore, OnlineScorer, RequestView, replay
from distillguard.respond.policy import Policy, PolicyInput, load_policy, policy_test
from distillguard.respond.state import MemoryState, RedisState

__all__ = [
    "AuditError", "AuditLog", "Directive", "DirectiveError", "DirectiveSet", "MemoryState",
    "OnlineScore", "OnlineScorer", "Policy", "PolicyError", "PolicyInput", "RedisState",
    "RequestView", "RespondError", "StateStoreError", "UserAttrs", "dry_run", "load_directives",
    "load_policy", "policy_test", "query", "replay", "verify",
]
