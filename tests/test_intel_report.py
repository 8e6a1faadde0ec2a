"""Evidence package and the `intel` Typer sub-app."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import orjson
import pytest

stix2 = pytest.importorskip("stix2")

from typer.testing import CliRunner  # noqa: E402

from distillguard.intel import load_campaigns, write_report  # noqa: E402
from distillguard.intel.cli import app  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "intel"
KEY = b"test-sharing-group-key-0123456789"


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    db = tmp_path / "store.duckdb"
    con = duckdb.connect(str(db))
    con.execute((FIXTURES / "requests.sql").read_text()).fetchall()
    con.close()
    return db


def test_report_package(tmp_path: Path, store: Path) -> None:
    campaign = load_campaigns(FIXTURES)[0]
    campaign = {**campaign, "reasons": [*campaign["reasons"], "<script>alert(1)</script>"],
                "actions": ["suspended 4 accounts on 2025-03-05"]}
    con = duckdb.connect(str(store), read_only=True)
    manifest_path = write_report(campaign, tmp_path / "pkg", KEY, "ACME <AI>", con=con)
    manifest = orjson.loads(manifest_path.read_bytes())
    names = {f["path"] for f in manifest["files"]}
    assert names == {"report.html", "bundle.json"}
    for f in manifest["files"]:
        data = (tmp_path / "pkg" / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"]
    html = (tmp_path / "pkg" / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "ACME &lt;AI&gt;" in html
    assert "2025-03-01" in html and "m-large-2" in html  # timeline + models from the store
    assert "Chain-of-thought" in html and "AML.T0024.002" in html
    assert "suspended 4 accounts" in html
    assert "acct_hydra_0001" not in html
    stix2.parse((tmp_path / "pkg" / "bundle.json").read_text(), allow_custom=True)
    raw = write_report(campaign, tmp_path / "raw", KEY, "ACME", reveal_ids=True)
    assert "acct_hydra_0001" in (raw.parent / "report.html").read_text()


def test_cli_export_import_match_report(tmp_path: Path, store: Path) -> None:
    runner = CliRunner()
    key = tmp_path / "group.key"
    key.write_text(KEY.decode() + "\n")
    out = tmp_path / "bundle.json"
    r = runner.invoke(app, ["export", "--results", str(FIXTURES), "--db", str(store),
                            "--campaign", "camp-001", "--out", str(out), "--key-file", str(key),
                            "--producer", "ACME AI"])
    assert r.exit_code == 0, r.output
    stix2.parse(out.read_text(), allow_custom=True)
    r = runner.invoke(app, ["export", "--results", str(FIXTURES), "--all", "--format", "misp",
                            "--out", str(tmp_path / "misp.json"), "--key-file", str(key)])
    assert r.exit_code == 0, r.output
    assert orjson.loads((tmp_path / "misp.json").read_bytes())["Event"]["Attribute"]
    r = runner.invoke(app, ["export", "--results", str(FIXTURES), "--campaign", "nope",
                            "--out", str(out), "--key-file", str(key)])
    assert r.exit_code == 2 and "unknown campaign" in r.output
    r = runner.invoke(app, ["import", str(out), "--db", str(store), "--source", "Self",
                            "--confidence", "70"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["match", "--db", str(store), "--key-file", str(key)])
    assert r.exit_code == 0, r.output
    assert "acct_hydra_0001" in r.output  # our own exported campaign matches itself
    r = runner.invoke(app, ["report", "--campaign", "camp-002", "--results", str(FIXTURES),
                            "--out", str(tmp_path / "pkg"), "--key-file", str(key)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pkg" / "manifest.json").exists()
