"""respond CLI verbs: audit verify/query, directive dry-run/validate, policy check, replay."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from distillguard.gateway.cli import app as gateway_app
from distillguard.respond.audit import AuditLog
from distillguard.respond.cli import app
from distillguard.store import connect

runner = CliRunner()


def test_audit_verify_and_query(tmp_path: Path) -> None:
    a = AuditLog(tmp_path / "a.jsonl")
    for i in range(3):
        a.append("decision", account_id=f"x{i}", action="allow")
    r = runner.invoke(app, ["audit", "verify", str(a.path)])
    assert r.exit_code == 0 and json.loads(r.output)["entries"] == 3
    r = runner.invoke(app, ["audit", "query", str(a.path), "--account", "x1"])
    assert r.exit_code == 0 and json.loads(r.output)["account_id"] == "x1"
    a.path.write_text(a.path.read_text().replace('"x1"', '"x9"'))
    assert runner.invoke(app, ["audit", "verify", str(a.path)]).exit_code == 1


def test_directive_dry_run_and_validate(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    con = connect(db)
    con.execute("INSERT INTO requests (request_id, ts, account_id, model, country) VALUES "
                "('r1', TIMESTAMP '2026-01-01', 'a1', 'frontier-1', 'XX'), "
                "('r2', TIMESTAMP '2026-01-01', 'a2', 'frontier-1', 'US')")
    con.close()
    f = tmp_path / "d.yaml"
    f.write_text("id: new\neffect: deny\nmodels: [frontier-*]\nusers: {country: [XX]}\n"
                 "legal_reference: R\n")
    r = runner.invoke(app, ["directive", "dry-run", str(f), "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["affected_accounts"] == 1
    f.write_text("id: new\neffect: deny\nmodels: [x]\nlegal_reference: R\n"
                 "condition: principal.country in resource.name\n")
    r = runner.invoke(app, ["directive", "validate", str(f)])
    assert r.exit_code == 2


def test_policy_check_and_replay(tmp_path: Path) -> None:
    from importlib import resources
    pol = str(resources.files("distillguard").joinpath("data/policy.yaml"))
    assert runner.invoke(app, ["policy", "check", pol]).exit_code == 0
    logs = tmp_path / "l.jsonl"
    logs.write_text(json.dumps({"request_id": "1", "ts": "2026-01-01T00:00:00Z",
                                "account_id": "a", "model": "m", "prompt": "hi"}) + "\n")
    r = runner.invoke(app, ["replay", str(logs), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0 and json.loads(r.output)["requests"] == 1
    assert (tmp_path / "o" / "alerts.jsonl").exists()


def test_gateway_cli_requires_auth_mode() -> None:
    r = runner.invoke(gateway_app, ["--upstream", "http://127.0.0.1:9"])
    assert r.exit_code != 0


def test_gateway_cli_workers_need_redis() -> None:
    r = runner.invoke(gateway_app, ["--upstream", "http://127.0.0.1:9", "--allow-account-header",
                                    "--workers", "2"])
    assert r.exit_code != 0 and "redis" in r.output.lower()


def test_gateway_cli_worker_files_are_per_process(tmp_path, monkeypatch) -> None:
    import os

    from distillguard.gateway import cli as gcli

    monkeypatch.setenv(gcli._ENV, json.dumps({
        "upstream": "http://127.0.0.1:9", "policy": None, "directives": [], "keys": None,
        "allow_account_header": True, "redis_url": "redis://127.0.0.1:9/0",
        "fail_mode": "closed", "audit": str(tmp_path / "audit.jsonl"),
        "request_log": str(tmp_path / "requests.jsonl"), "upstream_api_key": None}))
    app = gcli._worker_app()
    assert app.state.guard.fail_mode == "closed"
    assert gcli._per_worker(tmp_path / "audit.jsonl").name == f"audit-{os.getpid()}.jsonl"
