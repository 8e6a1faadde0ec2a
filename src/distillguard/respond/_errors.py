"""Errors of the respond layer, all under :class:`distillguard.errors.DistillguardError`.

DistillguardError
 └── RespondError           anything in the request-path layer
      ├── DirectiveError    an access directive is invalid (YAML, fields, Cedar validation)
      ├── PolicyError       the action policy is invalid
      ├── AuditError        the audit log cannot be read or written
      └── StateStoreError   the online state store (Redis) is unreachable or failed
"""

from __future__ import annotations

from distillguard.errors import DistillguardError


class RespondError(DistillguardError):
    """Base class of errors raised by ``distillguard.respond`` and the gateway."""


class DirectiveError(RespondError):
    """An access directive is invalid; the message names the directive and the field."""


class PolicyError(RespondError):
    """The graduated-action policy is invalid; the message names the rule and the field."""


class AuditError(RespondError):
    """The audit log cannot be read or appended to."""


class StateStoreError(RespondError):
    """The online scorer's state store failed (e.g. Redis down); gateways apply fail_mode."""
