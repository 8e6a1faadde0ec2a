"""Output files are replaced whole (distillguard.outfiles): found by the crash harness, a
SIGKILL while accounts.csv was being written left it torn."""

from __future__ import annotations

import json

import polars as pl
import pytest

from distillguard.outfiles import remove_stale, replacing


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    p = tmp_path / "accounts.csv"
    p.write_text("account_id,score\na,0.1\n")
    with pytest.raises(RuntimeError), replacing(p) as tmp:
        tmp.write_text("account_id,score\nb,0.")      # half a row, then the crash
        raise RuntimeError("killed")
    assert p.read_text() == "account_id,score\na,0.1\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["accounts.csv"]


def test_a_finished_write_replaces_the_file(tmp_path):
    p = tmp_path / "campaigns.json"
    p.write_text("[]")
    with replacing(p) as tmp:
        assert tmp.parent == p.parent and tmp != p
        tmp.write_text('[{"campaign_id": "cmp-1"}]')
        assert json.loads(p.read_text()) == []          # readers see the old file until then
    assert json.loads(p.read_text()) == [{"campaign_id": "cmp-1"}]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["campaigns.json"]


def test_write_outputs_clears_a_killed_runs_leftovers(tmp_path):
    from distillguard.api import write_outputs
    from distillguard.config import load_config

    stale = tmp_path / ".accounts.csv.4242.partial"
    stale.write_text("account_id,sco")
    other = tmp_path / ".notes.partial"                 # not ours: kept
    other.write_text("x")
    scores = pl.DataFrame({"account_id": ["a", "b"], "score": [0.9, 0.1],
                           "flagged": [True, False], "campaign_id": [None, None],
                           "reasons": ["r", ""]})
    write_outputs(None, tmp_path, scores, [], {}, load_config())
    assert not stale.exists() and other.exists()
    assert (tmp_path / "accounts.csv").read_text().splitlines()[0] == (
        "account_id,score,flagged,campaign_id,reasons")
    assert json.loads((tmp_path / "campaigns.json").read_text()) == []
    assert remove_stale(tmp_path, ("accounts.csv",)) == 0
