"""Respond in the request path: directives, online scoring, graduated actions, audit.

Depends only on earlier stages (config, signal rules, scoring calibration, ingest, store).

Names are imported on first use (PEP 562), so ``replay`` and the policy and audit verbs
work on the base install: only directives need ``cedarpy`` and ``RedisState`` ``redis``
(the ``gateway`` extra).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AuditError": "_errors", "DirectiveError": "_errors", "PolicyError": "_errors",
    "RespondError": "_errors", "StateStoreError": "_errors",
    "AuditLog": "audit", "query": "audit", "verify": "audit",
    "Directive": "directives", "DirectiveSet": "directives", "UserAttrs": "directives",
    "dry_run": "directives", "load_directives": "directives",
    "OnlineScore": "online", "OnlineScorer": "online", "RequestView": "online",
    "replay": "online",
    "Policy": "policy", "PolicyInput": "policy", "load_policy": "policy",
    "policy_test": "policy",
    "FallbackState": "state", "MemoryState": "state", "RedisState": "state",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'distillguard.respond' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"distillguard.respond.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
