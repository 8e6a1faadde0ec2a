"""OpenAI-compatible gateway that applies distillguard in the request path."""

from distillguard.gateway.app import RequestLog, create_app
from distillguard.gateway.auth import Caller, KeyStore

__all__ = ["Caller", "KeyStore", "RequestLog", "create_app"]
