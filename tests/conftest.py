from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def shared_data() -> Path | None:
    """../shared/data beside the checkout (CI has it); None when absent."""
    env = os.environ.get("DISTILLGUARD_SHARED_DATA")
    p = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return p if p.is_dir() else None


@pytest.fixture
def cfg():
    from distillguard.config import load_config

    return load_config()
