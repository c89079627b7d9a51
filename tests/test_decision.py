"""The decision layer (issue 21): presence rule, persistence (N/M exact, with K > 1 and two sources),
``--save-masks``, and the clinical video figures on hand-made sequences with known answers.

Synthetic data only where the edge case needs it: frames that hold a white square (the object) or not,
and a toy backend that calls bright pixels foreground, so that what must be shown is known exactly.
The real clip and the shipped model are in tests/test_default_model.py.
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtseg.decision import Persistence, PresenceRule, apply_presence, resolve_presence
from rtseg.errors import RtsegError
from rtseg.video_eval import clinical_figures

from helpers import BrightBackend, square_frames

HW = (64, 64)


# -- presence ----------------------------------------------------------------------------------------------
def test_presence_rule_peak_and_area():
    z = np.full((4, 1, 8, 8), -3.0, np.float32)
    z[1, 0, :2, :2] = 0.5  # 4 px, peak 0.5
    z[2, 0, :4, :4] = 3.0  # 16 px, peak 3
    z[3, 0, 0, 0] = 9.0  # 1 px, peak 9
    assert PresenceRule(0.0, 1).present(z).tolist() == [False, True, True, True]
    assert PresenceRule(2.0, 1).present(z).tolist() == [False, False, True, True]
    assert PresenceRule(2.0, 8).present(z).tolist() == [False, False, True, False]
    masks, present, raw_any = apply_presence(PresenceRule(2.0, 8), z)
    assert raw_any.tolist() == [False, True, True, True] and present.tolist() == [False, False, True, False]
    assert masks[1].sum() == 0 and masks[3].sum() == 0 and masks[2].sum() == 16


def test_presence_record_and_overrides():
    meta = {"decision": {"presence": {"min_peak": 2.5, "min_area": 32}}}
    assert resolve_presence(meta, 1) == PresenceRule(2.5, 32)
    assert resolve_presence(meta, 1, min_peak=1.0) == PresenceRule(1.0, 32)
    assert resolve_presence(meta, 1, raw=True) is None
    assert resolve_presence({}, 1) == PresenceRule()  # no record: the network's own mask
    assert resolve_presence(meta, 3) is None  # multi-class: no presence question
    with pytest.raises(RtsegError, match="binary models only"):
        resolve_presence({}, 3, min_peak=1.0)
    with pytest.raises(RtsegError, match="decision.presence"):
        resolve_presence({"decision": {"presence": {"min_peak": "high"}}}, 1)
    with pytest.raises(RtsegError, match="finite logit"):
        PresenceRule(float("inf"), 1)


def test_model_json_decision_is_checked():
    from rtseg.meta import ModelMeta

    ModelMeta.from_dict({"model": "eunet-s", "decision": {"presence": {"min_peak": 1.0, "min_area": 4},
                                                          "persistence": {"on_frames": 3, "hold_frames": 2}}})
    for bad in ({"presence": {"min_peak": 1.0, "min_area": -1}}, {"persistence": {"on_frames": 0, "hold_frames": 0}},
                "yes"):
        with pytest.raises(RtsegError, match="model.json"):
            ModelMeta.from_dict({"model": "eunet-s", "decision": bad})


PEAK, AREA = "presence threshold must be a finite logit", "presence min-area must be a whole number of pixels ≥ 0"
PRESENCE_LINES = [  # (min_peak, min_area, the error line); the field types are pydantic's (issue 25 item 3)
    (True, 1, f"{PEAK}, got True; pass e.g. --presence-threshold 2.5"),
    ("3", 1, f"{PEAK}, got '3'; pass e.g. --presence-threshold 2.5"),
    (float("nan"), 1, f"{PEAK}, got nan; pass e.g. --presence-threshold 2.5"),
    (10**400, 1, f"{PEAK}, got {10**400!r}; pass e.g. --presence-threshold 2.5"),  # an OverflowError once
    (1.0, True, f"{AREA}, got True; pass e.g. --presence-min-area 32"),
    (1.0, 3.0, f"{AREA}, got 3.0; pass e.g. --presence-min-area 32"),
    (1.0, -1, f"{AREA}, got -1; pass e.g. --presence-min-area 32"),
    (1.0, "32", f"{AREA}, got '32'; pass e.g. --presence-min-area 32"),
]


@pytest.mark.parametrize("peak,area,line", PRESENCE_LINES, ids=[f"{p!r:.8},{a!r}" for p, a, _ in PRESENCE_LINES])
def test_presence_rule_field_errors_are_these_lines(peak, area, line):
    with pytest.raises(RtsegError) as e:
        PresenceRule(peak, area)
    assert str(e.value) == line
    with pytest.raises(RtsegError) as e:
        PresenceRule.from_dict({"min_peak": peak, "min_area": area}, "ck/model.json")
    assert str(e.value) == f"ck/model.json: 'decision.presence': {line}"


def test_presence_record_is_an_object_with_both_fields():
    from rtseg.meta import ModelMeta

    line = ("ck/model.json: 'decision.presence' must be an object with min_peak and min_area; "
            "recalibrate it with 'rtseg calibrate-decision'")
    for bad in ({"min_peak": 1.0}, [1.0, 4], None):
        with pytest.raises(RtsegError) as e:
            PresenceRule.from_dict(bad, "ck/model.json")
        assert str(e.value) == line
    assert PresenceRule.from_dict({"min_peak": 2, "min_area": 32, "chosen_on": "val"}) == PresenceRule(2, 32)
    assert PresenceRule(2, 32).min_peak == 2 and PresenceRule(2, 32).to_dict() == {"min_peak": 2.0, "min_area": 32}
    with pytest.raises(RtsegError, match="min-area"):  # replace() checks too
        dataclasses.replace(PresenceRule(2, 32), min_area=-1)
    with pytest.raises(RtsegError, match=r"^model.json: 'decision.presence': presence threshold must be a finite logit"):
        ModelMeta.from_dict({"model": "eunet-s", "decision": {"presence": {"min_peak": 10**400, "min_area": 4}}})


ODD = (st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from([10**400, -(10**400), 2**1023])
       | st.text(max_size=3) | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@given(record=st.fixed_dictionaries({"min_peak": ODD, "min_area": ODD}) | ODD)
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_any_presence_record_is_a_rule_or_one_line(record):
    try:
        rule = PresenceRule.from_dict(record, "m.json")
    except RtsegError as e:
        assert str(e).startswith("m.json: 'decision.presence'") and "\n" not in str(e)
    else:
        assert rule.holds(rule.min_peak, rule.min_area) in (True, False) and rule.describe().startswith("peak logit")


# -- persistence -------------------------------------------------------------------------------------------
def _shown(p: Persistence, present, src=0, seqs=None):
    out = []
    for i, v in enumerate(present):
        seq = i if seqs is None else seqs[i]
        shown, mask, _ = p.step(src, seq, i == 0, bool(v), np.full((1, 1), seq, np.uint8))
        out.append((int(shown), int(mask[0, 0]) if shown else -1))
    return out


PATTERN = [0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0]


def test_persistence_n_m_exact():
    """N = 3, M = 2: shown from the 3rd consecutive present frame; the last shown mask held 2 frames."""
    got = _shown(Persistence(3, 2), PATTERN)
    assert [s for s, _ in got] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert [m for _, m in got][6:10] == [6, 7, 7, 7]  # frames 8 and 9 hold frame 7's mask
    assert [s for s, _ in _shown(Persistence(1, 0), PATTERN)] == PATTERN
    assert [s for s, _ in _shown(Persistence(1, 1), PATTERN)] == [0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0]


def test_persistence_counts_missing_frames_and_restarts_on_reconnect():
    p = Persistence(2, 1)
    # frames 0, 1 present → shown at 1; frames 2..3 missing (dropped): 2 absent frames > M = 1 → ended
    assert _shown(p, [1, 1, 1], seqs=[0, 1, 4]) == [(0, -1), (1, 1), (0, -1)]
    p = Persistence(2, 0)
    p.step(0, 0, True, True, np.zeros((1, 1), np.uint8))
    shown, _, _ = p.step(0, 1, True, True, np.zeros((1, 1), np.uint8))  # fresh: the run starts again
    assert not shown
    with pytest.raises(RtsegError, match="--persist"):
        Persistence(0, 0)


# -- through the stream: toy backend, two sources, K = 1 and K = 2 -------------------------------------------


def _reference(pattern, n, m, k):
    """What must be shown, by definition: presence of frame i is its keyframe's (K: i − i mod K); shown
    from the N-th consecutive present frame; the last shown frame held M frames."""
    present = [pattern[i - i % k] for i in range(len(pattern))]
    out, run, last, since = [], 0, None, 0
    for i, v in enumerate(present):
        if v:
            run += 1
            if last is not None or run >= n:
                last, since = i, 0
                out.append(i)
                continue
            out.append(None)
            continue
        run = 0
        if last is not None:
            since += 1
            if since > m:
                last = None
        out.append(last)
    return out, present


@pytest.mark.parametrize("k", [1, 2])
def test_stream_persistence_two_sources_save_masks(tmp_path, k):
    from rtseg.stream.pipeline import StreamOptions, StreamPipeline

    pats = [PATTERN, [1, 1, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1]]
    srcs = [str(square_frames(tmp_path / f"s{j}", p)) for j, p in enumerate(pats)]
    opts = StreamOptions(batch_size=3, persist=3, hold=2, infer_every=k, save_masks=tmp_path / "masks", fps=25)
    report = StreamPipeline(BrightBackend(), srcs, [], opts).run()
    assert report.masks_saved == 32 and report.decision["on_frames"] == 3 and report.decision["hold_frames"] == 2
    for j, p in enumerate(pats):
        files = sorted((tmp_path / "masks" / f"source{j}").iterdir())
        assert [f.name for f in files] == [f"{i:06d}.png" for i in range(16)]
        want, present = _reference(p, 3, 2, k)
        for i, f in enumerate(files):
            m = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            assert m.shape == HW and set(np.unique(m)) <= {0, 255}
            if want[i] is None:
                assert not m.any(), (j, i)
            else:  # the mask of frame want[i]'s keyframe: the square where that frame had it
                src = want[i] - want[i] % k
                x0 = 8 + 2 * src % 32
                assert m[16:32, x0:x0 + 16].all() and m.sum() == 255 * 256, (j, i, want[i])


def test_save_masks_refuses_a_folder_with_files(tmp_path):
    from rtseg.stream.pipeline import StreamOptions, StreamPipeline

    src = str(square_frames(tmp_path / "s", [1, 0]))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(RtsegError, match="not empty"):
        StreamPipeline(BrightBackend(), [src], [], StreamOptions(save_masks=tmp_path / "m")).run()
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"


def test_presence_rule_withholds_small_detections_in_the_stream(tmp_path):
    """The model's decision.presence (min_area 300 px > the 256-px square) withholds every frame;
    --raw (options.raw) shows them."""
    from rtseg.stream.pipeline import StreamOptions, StreamPipeline

    meta = {"decision": {"presence": {"min_peak": 1.0, "min_area": 300}}}
    src = str(square_frames(tmp_path / "s", [1, 1, 0, 1]))
    rep = StreamPipeline(BrightBackend(meta), [src], [], StreamOptions(save_masks=tmp_path / "a")).run()
    assert rep.decision["withheld_presence"] == 3 and rep.decision["shown"] == 0
    assert not any(cv2.imread(str(f), 0).any() for f in (tmp_path / "a").iterdir())
    rep = StreamPipeline(BrightBackend(meta), [src], [], StreamOptions(save_masks=tmp_path / "b", raw=True)).run()
    assert rep.decision is None
    assert [bool(cv2.imread(str(f), 0).any()) for f in sorted((tmp_path / "b").iterdir())] == [True, True, False, True]


# -- clinical figures ---------------------------------------------------------------------------------------
def test_clinical_figures_on_a_hand_made_sequence():
    """25 FPS, 100 frames: truth present in frames 40..69 (one episode, with a 3-frame gap at 50..52,
    0.12 s < 0.5 s: still one episode); shown: a 15-frame false alarm (0.6 s) at 5..19, a 3-frame one
    (0.12 s) at 25..27, a detection from frame 44 (delay 4 frames = 0.16 s), and a 30-frame false alarm
    (1.2 s) at 70..99 right after the polyp leaves."""
    n = 100
    truth = np.zeros(n, bool)
    truth[40:70] = True
    truth[50:53] = False
    pred = np.zeros(n, bool)
    pred[5:20] = pred[25:28] = True
    pred[44:70] = True
    pred[70:] = True
    hit = pred & truth
    dice = np.where(truth, np.where(hit, 0.8, 0.0), np.where(pred, 0.0, 1.0))
    c = clinical_figures(pred, truth, hit, dice, 0.04)
    fa = c["false_alarms"]
    # polyp-free frames: 100 − 27 = 73 (2.92 s); alarms: 5..19, 25..27, 50..52 (inside the polyp gap), 70..99
    assert fa["count"] == {"all": 4, ">=0.5s": 2, ">=1s": 1, ">=2s": 0}
    assert fa["class_free_minutes"] == pytest.approx(73 * 0.04 / 60)
    assert fa["per_minute"][">=0.5s"] == pytest.approx(2 / (73 * 0.04 / 60))
    dd = c["detection_delay"]
    assert dd["episodes"] == 1 and dd["missed"] == 0 and dd["delays_s"] == [pytest.approx(0.16)]
    assert c["dice_truth_frames"] == pytest.approx(np.mean(dice[truth]))
    # nothing shown at all: one missed episode, no alarm
    c = clinical_figures(np.zeros(n, bool), truth, np.zeros(n, bool), dice, 0.04)
    assert c["detection_delay"]["missed"] == 1 and c["false_alarms"]["count"]["all"] == 0


# -- the real clip: --save-masks count / size / order; eval --video --masks none ----------------------------
@pytest.mark.slow
def test_save_masks_on_the_real_colonoscopy_clip(tmp_path, shared_data, tiny_engine, backend):
    """Every frame of the real 720×576 colonoscopy clip (227) gets its PNG, at the frame's size, 0/255, in
    frame order: mask k agrees with what the stream draws on frame k (decoded independently)."""
    import av

    from helpers import expected_masks, run_cli_process

    clip = shared_data / "video" / "colonoscopy_polypgen_seq11.mp4"
    out = tmp_path / "masks"
    r = run_cli_process("stream", "--engine", str(tiny_engine), "--source", str(clip), "--no-output", "--save-masks", str(out),
                "--batch-size", "4", "--json", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["masks_saved"] == 227
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(227)]
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    want = expected_masks(backend, frames[::15])
    agree_same, agree_shifted = [], []
    for j, (k, m) in enumerate(zip(range(0, 227, 15), want)):
        saved = cv2.imread(str(files[k]), cv2.IMREAD_UNCHANGED)
        assert saved.shape == (576, 720) and saved.dtype == np.uint8 and set(np.unique(saved)) <= {0, 255}
        agree_same.append(((saved > 0) == (m > 0)).mean())
        agree_shifted.append(((cv2.imread(str(files[(k + 60) % 227]), 0) > 0) == (m > 0)).mean())
    assert min(agree_same) > 0.98 and np.mean(agree_same) > np.mean(agree_shifted) + 0.02, (agree_same, agree_shifted)


def test_eval_video_without_masks_scores_false_alarms(tmp_path, shared_data, tiny_engine):
    """``--masks none``: a clip with no polyp is scored for false alarms only; the table, the JSON and the
    plot carry the clinical figures."""
    from helpers import run_cli_process

    clip = shared_data / "video" / "colonoscopy_polypgen_seq11.mp4"
    r = run_cli_process("eval", "--engine", str(tiny_engine), "--video", str(clip), "--masks", "none", "--max-frames", "40",
                "--out", str(tmp_path / "v.json"), "--threads", "1")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "v.json").read_text())
    c = res["classes"]["foreground"]
    assert res["masks"] is None and c["empty_truth_frames"] == 40 and c["truth_frames"] == 0
    fa = c["clinical"]["false_alarms"]
    assert fa["class_free_minutes"] == pytest.approx(40 * 0.04 / 60)
    assert fa["count"]["all"] == len(fa["durations_s"]) and c["clinical"]["detection_delay"]["episodes"] == 0
    assert "false-alarm activations" in r.stdout and (tmp_path / "v.png").stat().st_size > 10_000
