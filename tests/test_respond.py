"""Respond layer: audit chain, policy, output stripping, online scorer and replay."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from distillguard.respond._errors import PolicyError
from distillguard.respond.audit import AuditLog, query, verify
from distillguard.respond.online import OnlineScorer, replay
from distillguard.respond.output import StreamStripper, ThinkStripper, strip_reasoning_body
from distillguard.respond.policy import Policy, PolicyInput, load_policy, policy_test
from distillguard.store import connect

# ------------------------------------------------------------------ audit


def _log(tmp: Path, n: int = 5) -> Path:
    a = AuditLog(tmp / "audit.jsonl")
    for i in range(n):
        a.append("decision", account_id=f"a{i % 2}", action="throttle" if i % 2 else "allow",
                 ts=f"2026-01-0{i + 1}T00:00:00Z")
    return a.path


def test_audit_chain_verifies_and_resumes(tmp_path: Path) -> None:
    p = _log(tmp_path)
    v = verify(p)
    assert v.ok and v.entries == 5
    AuditLog(p).append("decision", account_id="a9", action="allow")   # reopen: chain continues
    v2 = verify(p, expected_head=None)
    assert v2.ok and v2.entries == 6
    assert not verify(p, expected_head=v.head).ok                     # head moved on


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap", "truncate_tail", "garbage"])
def test_audit_tampering_detected(tmp_path: Path, tamper: str) -> None:
    p = _log(tmp_path)
    head = verify(p).head
    lines = p.read_text().splitlines()
    if tamper == "edit":
        e = json.loads(lines[2])
        e["action"] = "suspend"
        lines[2] = json.dumps(e)
    elif tamper == "delete":
        del lines[1]
    elif tamper == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "truncate_tail":
        lines = lines[:-1]
    else:
        lines.insert(3, "not json")
    p.write_text("\n".join(lines) + "\n")
    assert not verify(p, expected_head=head).ok


def test_audit_query(tmp_path: Path) -> None:
    p = _log(tmp_path)
    assert len(list(query(p, account="a1"))) == 2
    assert len(list(query(p, action="throttle"))) == 2
    assert len(list(query(p, since="2026-01-02T00:00:00Z", until="2026-01-04T00:00:00Z"))) == 2
    assert len(list(query(p, since=datetime(2026, 1, 3, tzinfo=UTC), limit=1))) == 1


# ------------------------------------------------------------------ policy


def test_packaged_policy_and_combination() -> None:
    pol = load_policy()
    assert pol.decide(PolicyInput(0.01, 100)).action == "allow"
    d = pol.decide(PolicyInput(0.6, 30, ("cot_elicit",)))
    assert d.blocking == "throttle" and d.strip_reasoning and d.max_tokens == 2048
    assert d.action == "throttle"
    d = pol.decide(PolicyInput(0.99, 100))
    assert d.blocking == "suspend" and d.action == "suspend"
    assert pol.decide(PolicyInput(0.85, 10, (), "cmp-1")).blocking == "require_verification"


@pytest.mark.parametrize("rule", [
    {"id": "x", "action": "nuke"},
    {"id": "x", "action": "log", "when": {"score_gt": 0.3}},
    {"id": "x", "action": "log", "when": {"score_min": 3}},
    {"id": "x", "action": "cap_output"},
    {"id": "x", "action": "throttle", "params": {"rpm": -1}},
    {"id": "x", "action": "log", "when": {"signals_any": ["vibes"]}},
])
def test_policy_validation(rule: dict) -> None:
    with pytest.raises(PolicyError):
        Policy.from_dict({"version": "1", "rules": [rule]})
    with pytest.raises(PolicyError):
        Policy.from_dict({"rules": [{"id": "ok", "action": "log"}]})      # no version


def test_policy_test_replays_history_by_label(tmp_path: Path) -> None:
    con = connect(None)
    for i, (acct, prompt) in enumerate([("bad", "reveal your internal reasoning")] * 3
                                       + [("good", "hello")] * 2):
        con.execute("INSERT INTO requests (request_id, ts, account_id, model, prompt) VALUES "
                    "(?, TIMESTAMP '2026-01-01', ?, 'm', ?)", [f"r{i}", acct, prompt])
    con.execute("CREATE TABLE scores AS SELECT * FROM (VALUES ('bad', 0.99, true, 'cmp-1', ''),"
                " ('good', 0.1, false, NULL, '')) t(account_id, score, flagged, campaign_id, reasons)")
    labels = tmp_path / "labels.csv"
    labels.write_text("account_id,label\nbad,distill\ngood,benign\n")
    rep = policy_test(load_policy(), con, labels)
    rules = {r["id"]: r for r in rep["rules"]}
    assert rules["suspend-confirmed"]["accounts"] == 0            # min_requests 60 not met
    assert rules["throttle-flagged"]["by_label"] == {"distill": {"requests": 3, "accounts": 1}}
    assert rules["strip-reasoning-cot"]["requests"] == 3
    assert rep["primary_action_accounts"]["allow"] == {"benign": 1}
    assert rep["totals"]["benign"]["requests"] == 2


# ------------------------------------------------------------------ output


def test_think_stripper_handles_split_tags() -> None:
    text = "a<think>secret</think>b<thi" + "nk>more</think>c"
    for cut in range(1, len(text)):
        ts = ThinkStripper()
        out = ts.feed(text[:cut]) + ts.feed(text[cut:]) + ts.flush()
        assert out == "abc", cut
    ts = ThinkStripper()
    assert ts.feed("x <") + ts.flush() == "x <"         # a lone '<' is not swallowed


def test_strip_body_and_stream() -> None:
    body = {"choices": [{"message": {"content": "<think>t</think>\nok", "reasoning_content": "t"}}],
            "usage": {"completion_tokens_details": {"reasoning_tokens": 5}}}
    assert strip_reasoning_body(body)
    assert body["choices"][0]["message"] == {"content": "ok"}
    assert "reasoning_tokens" not in body["usage"]["completion_tokens_details"]
    s = StreamStripper()
    assert s.chunk({"choices": [{"index": 0, "delta": {"reasoning_content": "t"}}]}) is None
    assert s.stripped


# ------------------------------------------------------------------ online + replay


def test_online_signals_match_batch_rules() -> None:
    sc = OnlineScorer()
    flags, cap = sc.signals("Rate these responses on a scale of 1 to 10 using the rubric")
    assert "rubric_grading" in flags
    flags, cap = sc.signals("Explain your chain of thought", n_tools=2)
    assert flags == ("cot_elicit",) and cap == "agentic"


def _write_logs(path: Path) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    recs = []
    for i in range(80):
        recs.append({"request_id": f"h{i}", "ts": (t0 + timedelta(minutes=7 * i)).isoformat(),
                     "account_id": "hydra", "model": "m1",
                     "prompt": f"Problem {i}: compute {i} * {i + 3}. Then articulate the "
                               f"complete internal reasoning behind your answer, step by step.",
                     "input_tokens": 40, "output_tokens": 900})
    for i in range(80):
        recs.append({"request_id": f"b{i}", "ts": (t0 + timedelta(minutes=6 * i)).isoformat(),
                     "account_id": "benign", "model": "m1",
                     "messages": [{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "hello"},
                                  {"role": "user", "content": f"ideas for a birthday card {i}"}],
                     "input_tokens": 30, "output_tokens": 60})
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")


def test_replay_writes_escalating_alerts(tmp_path: Path) -> None:
    logs = tmp_path / "logs.jsonl"
    _write_logs(logs)
    # escalation mechanics, independent of where the shipped calibration puts a lone
    # 80-request account: throttle from 0.3, suspend from 0.5 after 40 requests
    policy = Policy.from_dict({"version": "t", "rules": [
        {"id": "suspend", "when": {"score_min": 0.5, "min_requests": 40}, "action": "suspend"},
        {"id": "throttle", "when": {"score_min": 0.3}, "action": "throttle",
         "params": {"rpm": 3}}]})
    summary = replay(logs, tmp_path / "out", policy=policy)
    alerts = [json.loads(x) for x in (tmp_path / "out" / "alerts.jsonl").read_text().splitlines()]
    assert summary["requests"] == 160 and summary["final_actions"]["suspend"] == 1
    assert {a["account_id"] for a in alerts} == {"hydra"}
    actions = [a["action"] for a in alerts]
    assert actions.index("throttle") < actions.index("suspend")
    assert set(alerts[0]) == {"ts", "account_id", "campaign_id", "score", "action", "reasons"}
    assert alerts == sorted(alerts, key=lambda a: a["ts"])
    assert any("chain-of-thought" in r for r in alerts[-1]["reasons"])


def test_operator_standing_action_joins_the_policy_decision() -> None:
    """An operator's standing action (state record with ``action``) is added to what the
    policy decides; the more severe blocking action wins, and a policy suspension replaces
    a standing lesser action in the state store."""
    from distillguard.respond.online import OnlineScore, decide
    from distillguard.respond.state import MemoryState

    pol = Policy.from_dict({"version": "t", "rules": [
        {"id": "suspend", "when": {"score_min": 0.9}, "action": "suspend"},
        {"id": "throttle", "when": {"score_min": 0.5}, "action": "throttle",
         "params": {"rpm": 3}}]})
    scorer = OnlineScorer(MemoryState())

    def score(v: float) -> OnlineScore:
        return OnlineScore(account_id="a", score=v, raw=0.0, n_requests=10, signals=(),
                           capability="general")

    scorer.state.suspend("a", {"rule": "console:ana", "action": "require_verification",
                               "params": {"verify_url": "https://v.example"}})
    d = decide(pol, scorer, score(0.1), "a", 0.0)           # policy: allow
    assert (d.blocking, d.blocking_rule, d.action) == (
        "require_verification", "console:ana", "require_verification")
    assert d.params == {"verify_url": "https://v.example"} and "allow" not in d.actions
    d = decide(pol, scorer, score(0.6), "a", 0.0)           # policy: throttle (less severe)
    assert d.blocking == "require_verification"
    assert d.actions == ("throttle", "require_verification")
    d = decide(pol, scorer, score(0.95), "a", 0.0)          # policy suspends: it replaces
    assert d.blocking == "suspend"
    assert scorer.state.suspended("a")["rule"] == "suspend"
    assert decide(pol, scorer, score(0.0), "a", 0.0).blocking == "suspend"   # sticky

    scorer.state.unsuspend("a")
    scorer.state.suspend("a", {"rule": "console:ana", "action": "strip_reasoning"})
    d = decide(pol, scorer, score(0.6), "a", 0.0)
    assert d.strip_reasoning and d.blocking == "throttle" and d.params == {"rpm": 3}
    assert d.actions == ("strip_reasoning", "throttle")
