"""Install: an ``all`` extra; verbs that need no extra run on the base install.

The base install is simulated in a subprocess whose import system refuses every package of
every extra (as on a machine where only the base dependencies are installed). ``DG_LONG=1``
also installs the package without extras into a fresh virtualenv and runs ``replay`` there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRA_MODULES = ["wordllama", "stix2", "taxii2client", "fastapi", "starlette", "uvicorn",
                 "httpx", "cedarpy", "redis", "aiohttp", "uvloop", "httptools", "hiredis",
                 "opentelemetry", "litellm", "pyspark", "pandas", "sqlglot"]
BASE = f"""
import sys, importlib.abc
BLOCK = set({EXTRA_MODULES!r})
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
sys.argv = ["distillguard"] + sys.argv[1:]
from distillguard.cli import main
try:
    main()
finally:
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCK)
    assert not leaked, leaked
"""


def _base(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BASE, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})


def test_all_extra_covers_every_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    (spec,) = extras["all"]
    named = set(spec.split("[", 1)[1].rstrip("]").split(","))
    assert named == set(extras) - {"all", "dev"}


def test_base_install_verbs(tmp_path):
    from distillguard.sim import simulate

    logs = simulate(tmp_path / "t", scenario="tiny", seed=3).logs[:2]
    r = _base("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # was: replay, respond and policy shown as needing an extra; the hint lost "[gateway]"
    lines = {ln.split()[1]: ln for ln in r.stdout.splitlines() if ln.startswith("│ ")
             and len(ln.split()) > 2}
    assert "needs" not in lines["replay"] and "needs" not in lines["respond"]
    assert "distillguard[gateway]" in lines["gateway"]
    r = _base("replay", *map(str, logs), "--out", str(tmp_path / "rep"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr                        # was: exit 2, needs gateway
    assert (tmp_path / "rep" / "online_accounts.csv").exists()
    r = _base("detect", *map(str, logs), "--out", str(tmp_path / "det"), "--quiet",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "det" / "report.html").exists()
    r = _base("respond", "directive", "validate",
              str(ROOT / "src/distillguard/data/directives/example.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "distillguard[gateway]" in r.stderr.replace("\n", "")
    r = _base("gateway", "--upstream", "http://127.0.0.1:9", cwd=tmp_path)
    assert r.returncode == 2 and "distillguard[gateway]" in (r.stdout + r.stderr)


@pytest.mark.skipif(os.environ.get("DG_LONG") != "1", reason="long profile (DG_LONG=1)")
def test_fresh_venv_base_install_runs_replay(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT)], check=True,
                   timeout=1500)
    found = subprocess.run([str(py), "-c", "import importlib.util as u; print([m for m in "
                            f"{EXTRA_MODULES!r} if u.find_spec(m)])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    from distillguard.sim import simulate

    logs = simulate(tmp_path / "t", scenario="tiny", seed=3).logs[:2]
    r = subprocess.run([str(venv / "bin" / "distillguard"), "replay", *map(str, logs),
                        "--out", str(tmp_path / "rep")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, (found, r.stderr[-2000:])
