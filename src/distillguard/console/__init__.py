"""Analyst console: a review queue, campaign and account pages, audited actions, feedback.

``distillguard console --db STORE`` serves it (docs/console.md). Reads the tables detection
writes (docs/CONTRACTS.md), keeps its own ``console_*`` tables in the same store, acts through
the gateway's state store and policy, and logs every action in a hash-chained audit log.
"""

from distillguard.console.app import ConsoleConfig, create_app

__all__ = ["ConsoleConfig", "create_app"]
