"""``rtseg calibrate-decision`` (``rtseg.decision_tuning``, issue 21): the presence rule and persistence
counts chosen on real validation folders, recorded in ``model.json``, and applied by ``eval``.

The real-data test runs the small EUNet trained on Kvasir at 64x64 (``tests/assets``) over the ``val``
parts of the polyp-free PolypGen sequences and CVC-ClinicDB (both split by sequence); synthetic records
only cover the edge cases of the selection rules.
"""

from __future__ import annotations

import json
import shutil

import pytest

from rtseg.decision import PresenceRule
from rtseg.decision_tuning import (
    DecisionCalibOptions,
    ImageRecord,
    calibrate_decision,
    choose_persistence,
    choose_presence,
    replay,
    sequences,
)
from rtseg.errors import RtsegError

from helpers import REPO, run_cli

LIMIT = DecisionCalibOptions.max_false_rate


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "ck"
    shutil.copytree(REPO / "tests" / "assets" / "eunet-tiny-kvasir64", folder)
    return folder


def test_calibrate_decision_on_real_validation_folders_and_eval_applies_it(tmp_path, capsys, shared_data, model):
    negatives, cvc = shared_data / "polypgen-negatives", shared_data / "cvc-clinicdb-256"
    code, out, err = run_cli(capsys, "calibrate-decision", "--checkpoint", model, "--data", negatives, "--data", cvc,
                             "--threads", "1", "--out", tmp_path / "rec.json")
    assert code == 0, err
    rec = json.loads((tmp_path / "rec.json").read_text())
    c, tables = rec["calibration"], rec["tables"]
    assert c["data"] == ["polypgen-negatives (val, 74 images)", "cvc-clinicdb-256 (val, 61 images)"]
    # presence: under the false-detection limit, no rule of the grid has a higher Dice on the polyp images
    chosen, raw = c["presence_chosen"], c["presence_raw"]
    assert chosen["object_free"] == 74 and chosen["false_rate"] <= LIMIT < raw["false_rate"]
    assert max(t["dice_object"] for t in tables["presence"] if t["false_rate"] <= LIMIT) == chosen["dice_object"]
    assert rec["presence"] == {"min_peak": chosen["min_peak"], "min_area": chosen["min_area"]}
    # persistence: the validation videos (2 polyp-free sequences, 3 CVC videos), fewest errors within the delay
    assert c["sequences"]["count"] == 5 and c["sequences"]["frames"] > 100
    per, off = c["persistence_chosen"], c["persistence_off"]
    assert per["max_delay_s"] <= 0.5 and per["errors"] <= off["errors"]
    assert min(t["errors"] for t in tables["persistence"] if t["max_delay_s"] <= 0.5) == per["errors"]
    assert rec["persistence"] == {"on_frames": per["on_frames"], "hold_frames": per["hold_frames"]}
    # recorded in model.json, and what eval applies: the same false detections on the polyp-free images
    meta = json.loads((model / "model.json").read_text())
    assert meta["decision"]["presence"] == rec["presence"] and meta["decision"]["persistence"] == rec["persistence"]
    code, out, err = run_cli(capsys, "eval", "--checkpoint", model, "--data", negatives, "--split", "val", "--json",
                             "--threads", "1")
    assert code == 0, err
    ev = json.loads(out)
    assert ev["presence"] == rec["presence"]
    assert ev["false_detections"] == {"images": chosen["false_detections"], "of": 74}


def test_dry_run_leaves_model_json_as_it_was(capsys, shared_data, model):
    before = (model / "model.json").read_bytes()
    code, out, err = run_cli(capsys, "calibrate-decision", "--checkpoint", model, "--data",
                             shared_data / "polypgen-negatives", "--threads", "1", "--dry-run")
    assert code == 0 and '"presence"' in out and "written" not in out, err
    assert (model / "model.json").read_bytes() == before


def test_validation_without_polyp_free_images_is_refused(capsys, shared_data, model):
    code, _, err = run_cli(capsys, "calibrate-decision", "--checkpoint", model, "--data", shared_data / "cvc-clinicdb-256",
                           "--threads", "1")
    assert code == 2 and "hold no polyp-free image; add a folder of negatives" in err


# -- the selection rules on hand-made records (edge cases) ---------------------------------------------------
def _r(stem, peak, area, truth, dice=0.8, folder="f"):
    return ImageRecord(folder, stem, peak, area, dice, truth, truth and area > 0)


def test_presence_takes_the_best_dice_among_the_rules_within_the_limit():
    # a weak polyp-free blob (peak 2, 50 px) and two strong small polyps beside one weak large one: a peak
    # threshold keeps both small polyps, an area threshold only the large one
    recs = [_r("free", 2.0, 50, False), _r("p1", 9.0, 50, True), _r("p2", 3.0, 500, True), _r("p3", 9.0, 60, True)]
    rule, table = choose_presence(recs, DecisionCalibOptions(max_false_rate=0.0, peaks=(0.0, 5.0), areas=(1, 100)))
    ok = {(t["min_peak"], t["min_area"]): t["dice_object"] for t in table if t["false_rate"] == 0}
    assert ok[(0.0, 100)] < ok[(5.0, 1)] and rule == PresenceRule(5.0, 1)


def test_presence_falls_back_to_fewest_false_detections_when_no_rule_meets_the_limit():
    recs = [_r("a", 9.0, 500, False), _r("b", 9.0, 500, False), _r("c", 9.0, 500, True)]
    rule, table = choose_presence(recs, DecisionCalibOptions(peaks=(0.0, 5.0), areas=(1, 100)))
    assert all(t["false_rate"] == 1.0 for t in table) and rule == PresenceRule(0.0, 1)
    recs.append(_r("d", 2.0, 40, False))  # a weak false detection: peak ≥ 5 withholds it, keeps the polyp
    rule, _ = choose_presence(recs, DecisionCalibOptions(max_false_rate=0.7, peaks=(0.0, 5.0), areas=(1, 100)))
    assert rule == PresenceRule(0.0, 100)  # ties on Dice: the lower peak threshold first


def test_sequences_split_at_gaps_and_by_group():
    recs = [_r(f"v{i:03d}", 1.0, 10, True) for i in (1, 2, 3, 4, 6, 7, 8, 9, 10)] + [_r("single", 1.0, 10, True)]
    groups = {"f": {r.stem: "video1" for r in recs[:-1]}}
    seqs = sequences(recs, groups, min_len=4)
    assert [[r.stem for r in s] for s in seqs] == [["v001", "v002", "v003", "v004"],
                                                   ["v006", "v007", "v008", "v009", "v010"]]
    assert sequences(recs, groups, min_len=6) == []


def test_replay_counts_delay_misses_and_false_alarm_activations():
    # 5 polyp-free frames with one flash at frame 1, then 5 polyp frames found from the first one
    seq = [_r(f"s{i}", 8.0 if i == 1 else 0.0, 50 if i == 1 else 0, False) for i in range(5)]
    seq += [_r(f"s{i}", 8.0, 300, True) for i in range(5, 10)]
    rule = PresenceRule(1.0, 10)
    off = replay([seq], rule, on=1, hold=0, fps=25.0)
    assert (off["false_frames"], off["false_alarm_activations"], off["missed_frames"], off["max_delay_s"]) == (1, 1, 0, 0.0)
    on3 = replay([seq], rule, on=3, hold=0, fps=25.0)
    assert (on3["false_frames"], on3["missed_frames"], on3["max_delay_s"]) == (0, 2, pytest.approx(2 / 25))
    (on, hold), _ = choose_persistence([seq], rule, DecisionCalibOptions(on_frames=(1, 2, 3), hold_frames=(0,),
                                                                         max_delay_s=0.05))
    assert (on, hold) == (2, 0)  # 2 frames: the flash is gone, 1 frame late (0.04 s ≤ 0.05); 3 would be 0.08 s


def test_multi_class_models_are_refused():
    class FourClasses:
        num_classes = 4

    with pytest.raises(RtsegError, match="binary models"):
        calibrate_decision(FourClasses(), {}, ["x"])
