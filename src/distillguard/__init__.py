"""distillguard: find, stop and report illicit distillation in LLM API traffic."""

__version__ = "0.1.0"
