"""Named terms of the scoring config, and what a group member takes from its group."""

from __future__ import annotations

import duckdb
import pytest

from distillguard.config import load_config
from distillguard.errors import ConfigError
from distillguard.features.defs import ALL_FEATURES
from distillguard.linking.groups import GROUP_COLUMNS
from distillguard.respond.online import compile_evidence
from distillguard.scoring.evidence import evidence_frame, item_weight
from distillguard.scoring.fit import with_overlay


def test_terms_expand_in_every_expression(tmp_path) -> None:
    cfg = load_config()
    terms = cfg["scoring"]["terms"]
    assert {"member_tie", "member_gate", "member_take", "elicit_user_rate"} <= set(terms)
    # a term named like a column would shadow it everywhere
    assert not set(terms) & (set(ALL_FEATURES) | set(GROUP_COLUMNS))
    for it in cfg["scoring"]["evidence"]:
        for key in ("expr", "support"):
            for name in terms:
                assert name not in str(it.get(key) or ""), (it["name"], key, name)
    items = {it["name"]: it for it in cfg["scoring"]["evidence"]}
    # the content gate is the member's own coordination, not its community's
    assert "g_coord_own" in items["g_harvest"]["expr"]
    assert "g_coordination" not in items["g_harvest"]["expr"]
    assert terms["member_tie"] in items["g_coordination"]["expr"]
    # a term that uses an earlier one is expanded with it (the raw text keeps the name)
    user_rate = terms["elicit_user_rate"].replace(
        "framework_prompt_only", f"({terms['framework_prompt_only']})")
    assert "framework_prompt_only" in terms["elicit_user_rate"]
    assert items["elicit_model"]["support"].startswith(f"({user_rate})")

    # a user config replaces a term; a later term may use an earlier one; text is literal
    user = tmp_path / "c.yaml"
    user.write_text('scoring:\n  terms:\n    member_take: "1"\n'
                    '    x_base: "regexp_matches(a, \'\\\\d\')"\n    x_two: "x_base + x_base"\n')
    cfg2 = load_config(user)
    items2 = {it["name"]: it for it in cfg2["scoring"]["evidence"]}
    assert items2["g_coordination"]["expr"].endswith(" * (1)")
    assert "g_ties" in items2["g_coordination"]["expr"]
    assert cfg2["scoring"]["terms"]["x_two"] == "x_base + x_base"      # the raw text is kept
    bad = tmp_path / "bad.yaml"
    bad.write_text('scoring:\n  terms:\n    "Bad-Name": "1"\n')
    with pytest.raises(ConfigError):
        load_config(bad)


def test_expansion_keeps_backslashes_and_chains() -> None:
    from distillguard.config import _expand_terms

    raw = {"scoring": {"terms": {"a_t": "regexp_matches(p, '\\d+')", "b_t": "a_t * 2"},
                       "evidence": [{"name": "x", "expr": "b_t + a_t_not + a_t"}]}}
    got = _expand_terms(raw)["scoring"]["evidence"][0]["expr"]
    assert got == "((regexp_matches(p, '\\d+')) * 2) + a_t_not + (regexp_matches(p, '\\d+'))"
    assert raw["scoring"]["evidence"][0]["expr"] == "b_t + a_t_not + a_t"   # not mutated


#: (followup_share, account_age_days, created_day known) of four members of one group
MEMBERS = {"new_single_turn": (0.0, 3, True), "old_conversational": (0.5, 200, True),
           "old_single_turn": (0.0, 200, True), "new_conversational": (0.5, 3, True),
           "conversational_age_unknown": (0.5, 365, False)}


def test_an_established_conversational_member_takes_nothing_from_its_group() -> None:
    """Members of one strongly coordinated, young group: each takes the group's evidence in
    full, except one that is both conversational and established by a logged creation date;
    the online scorer computes the same contributions as batch."""
    base = load_config()
    items = [it for it in base["scoring"]["evidence"]
                   if it["name"] in ("g_coordination", "g_young", "conversational")]
    cfg = with_overlay(base, {"scoring": {"evidence": items}})
    weights = [item_weight(base, it) for it in items]
    group = {"g_attach": 1.0, "g_ties": 10.0, "g_size": 60.0, "g_requests": 5000.0,
             "g_coordination": 2.0, "g_coord_own": 2.0,
             "g_age_days": 4.0}
    con = duckdb.connect()
    con.execute("CREATE TABLE f (account_id VARCHAR, n_requests DOUBLE, followup_share DOUBLE,"
                " account_age_days DOUBLE, created_day DOUBLE, g_attach DOUBLE, g_ties DOUBLE,"
                " g_size DOUBLE, g_requests DOUBLE, g_coordination DOUBLE, g_coord_own DOUBLE,"
                " g_age_days DOUBLE)")
    for a, (fu, age, known) in MEMBERS.items():
        con.execute("INSERT INTO f VALUES (?, 100, ?, ?, ?, 1, 10, 60, 5000, 2, 2, 4)",
                    [a, fu, age, 20000.0 if known else None])
    ev = {r["account_id"]: r for r in evidence_frame(con, cfg, "f").to_dicts()}
    w = dict(zip([it["name"] for it in items], weights, strict=True))
    assert ev["new_single_turn"]["ev_g_coordination"] == pytest.approx(w["g_coordination"])
    assert ev["new_single_turn"]["ev_g_young"] == pytest.approx(w["g_young"])
    assert ev["new_conversational"]["ev_g_coordination"] == pytest.approx(w["g_coordination"])
    assert ev["old_single_turn"]["ev_g_coordination"] == pytest.approx(w["g_coordination"])
    assert ev["old_single_turn"]["ev_g_young"] == 0.0          # itself old: the group's youth
    assert ev["old_conversational"]["ev_g_coordination"] == 0.0
    assert ev["old_conversational"]["final_raw"] == ev["old_conversational"]["raw"] < 0
    assert ev["conversational_age_unknown"]["ev_g_coordination"] == pytest.approx(
        w["g_coordination"])

    comp = compile_evidence(items, weights, 20, 3)
    day = 86400.0
    for a, (fu, age, known) in MEMBERS.items():
        st = {"n": 100, "distinct": 100, "fu": fu * 100, "first_ts": 20000 * day + age * day}
        if known:
            st["created"] = 20000 * day
        contrib, _, _ = comp.fn(st, group)
        assert contrib == pytest.approx(tuple(ev[a][f"ev_{it['name']}"] for it in items)), a


#: (g_ties, n_requests) of members of one coordinated group of 60
TIES = {"tied": (10, 100), "one_channel_only": (0, 100), "one_tie": (1, 100),
        "too_small_to_show_ties": (0, 5)}


def test_a_member_takes_coordination_as_far_as_it_is_tied_on_two_channels() -> None:
    """A coordinated community can hold members tied to it on one channel only (the users
    of a popular framework's system prompt): they take none of its coordination; a member
    with three or more multi-channel ties takes all of it, one with one tie a third; a
    member with too few requests to show ties (keys count from three uses) is not judged
    on them. The online scorer computes the same contributions as batch."""
    base = load_config()
    items = [it for it in base["scoring"]["evidence"]
             if it["name"] in ("g_coordination", "conversational")]   # one own item at least
    cfg = with_overlay(base, {"scoring": {"evidence": items}})
    weights = [item_weight(base, it) for it in items]
    k = [it["name"] for it in items].index("g_coordination")
    w = weights[k]
    con = duckdb.connect()
    con.execute("CREATE TABLE f (account_id VARCHAR, n_requests DOUBLE, followup_share DOUBLE,"
                " account_age_days DOUBLE, created_day DOUBLE, g_attach DOUBLE, g_ties DOUBLE,"
                " g_size DOUBLE, g_requests DOUBLE, g_coordination DOUBLE, g_coord_own DOUBLE)")
    for a, (ties, n) in TIES.items():
        con.execute("INSERT INTO f VALUES (?, ?, 0, 5, 20000, 1, ?, 60, 5000, 1.5, 1.5)",
                    [a, n, ties])
    ev = {r["account_id"]: r["ev_g_coordination"] for r in
          evidence_frame(con, cfg, "f").to_dicts()}
    assert ev["tied"] == pytest.approx(w)
    assert ev["one_channel_only"] == 0.0
    assert 0.0 < ev["one_tie"] < w / 2                  # 1.5 / 3 = 0.5 on the 0.3..1.5 ramp
    # five requests: judged on ties for 5 / 20 of the way, 1.5 * 0.75 on the ramp
    assert ev["too_small_to_show_ties"] == pytest.approx(w * (1.5 * 0.75 - 0.3) / 1.2)
    comp = compile_evidence(items, weights, 20, 3)
    day = 86400.0
    for a, (ties, n) in TIES.items():
        st = {"n": n, "distinct": n, "fu": 0.0, "first_ts": 20005 * day, "created": 20000 * day}
        group = {"g_attach": 1.0, "g_ties": float(ties), "g_size": 60.0,
                 "g_requests": 5000.0, "g_coordination": 1.5, "g_coord_own": 1.5}
        contrib, _, _ = comp.fn(st, group)
        assert contrib[k] == pytest.approx(ev[a]), a


#: (g_coord_own, g_ties) of members of one community coordinated as a whole (1.5)
OWN = {"in_every_channel": (1.5, 10), "no_channel_of_its_own": (0.0, 0),
       "tied_but_on_no_channel": (0.0, 10), "one_channel_one_tie": (0.5, 1)}


def test_a_member_takes_its_groups_content_as_far_as_it_is_itself_coordinated() -> None:
    """A community's pooled content (here: what share of its prompts elicit) passes to a
    member through the member's own coordination (``member_gate``: its own channels and its
    multi-channel ties), not the community's: a fast adopter joined to a campaign's community
    by one shared client key takes none of the campaign's elicitation. The online scorer
    computes the same contributions as batch."""
    base = load_config()
    items = [it for it in base["scoring"]["evidence"]
             if it["name"] in ("g_elicit", "conversational")]
    cfg = with_overlay(base, {"scoring": {"evidence": items}})
    weights = [item_weight(base, it) for it in items]
    k = [it["name"] for it in items].index("g_elicit")
    con = duckdb.connect()
    con.execute("CREATE TABLE f (account_id VARCHAR, n_requests DOUBLE, followup_share DOUBLE,"
                " account_age_days DOUBLE, created_day DOUBLE, g_attach DOUBLE, g_ties DOUBLE,"
                " g_size DOUBLE, g_requests DOUBLE, g_coordination DOUBLE, g_coord_own DOUBLE,"
                " g_cot_rate DOUBLE, g_rubric_rate DOUBLE, g_censor_rate DOUBLE,"
                " g_elicit_model_rate DOUBLE)")
    for a, (own, ties) in OWN.items():
        con.execute("INSERT INTO f VALUES (?, 100, 0, 5, 20000, 1, ?, 60, 5000, 1.5, ?,"
                    " 0.5, 0, 0, 0.5)", [a, ties, own])
    ev = {r["account_id"]: r["ev_g_elicit"] for r in evidence_frame(con, cfg, "f").to_dicts()}
    assert ev["in_every_channel"] == pytest.approx(weights[k])
    assert ev["no_channel_of_its_own"] == 0.0
    assert ev["tied_but_on_no_channel"] == 0.0
    # gate 2 * 0.5 * 1 * (1 / 3) = 1/3 of a pooled rate of 1.0, on the 0.05..0.4 ramp
    assert ev["one_channel_one_tie"] == pytest.approx(weights[k] * (1 / 3 - 0.05) / 0.35)
    comp = compile_evidence(items, weights, 20, 3)
    day = 86400.0
    for a, (own, ties) in OWN.items():
        st = {"n": 100, "distinct": 100, "fu": 0.0, "first_ts": 20005 * day,
              "created": 20000 * day}
        group = {"g_attach": 1.0, "g_ties": float(ties), "g_size": 60.0, "g_requests": 5000.0,
                 "g_coordination": 1.5, "g_coord_own": own, "g_cot_rate": 0.5,
                 "g_rubric_rate": 0.0, "g_censor_rate": 0.0, "g_elicit_model_rate": 0.5}
        contrib, _, _ = comp.fn(st, group)
        assert contrib[k] == pytest.approx(ev[a]), a
