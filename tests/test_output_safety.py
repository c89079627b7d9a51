"""Issue 26 (one output-safety rule in the stream): an output is never an input and never another output
of the same run; the refusal comes before anything is written, and the inputs are left as they were."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from test_decision import BrightBackend, _frames

from rtseg.errors import RtsegError
from rtseg.stream.pipeline import StreamOptions, StreamPipeline


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_metrics_jsonl_onto_the_input_video_is_refused(tmp_path, shared_data):
    clip = tmp_path / "c.mp4"
    shutil.copy(shared_data / "video" / "colonoscopy_polypgen_seq11.mp4", clip)
    before = _sha(clip)
    with pytest.raises(RtsegError, match="--metrics-jsonl .* would overwrite the input"):
        StreamPipeline(BrightBackend(), [str(clip)], [str(tmp_path / "o.mp4")],
                       StreamOptions(metrics_jsonl=clip, max_frames=2)).run()
    assert _sha(clip) == before and not (tmp_path / "o.mp4").exists()
    with pytest.raises(RtsegError, match="--metrics-jsonl .* is also the output"):
        StreamPipeline(BrightBackend(), [str(clip)], [str(tmp_path / "o.mp4")],
                       StreamOptions(metrics_jsonl=tmp_path / "o.mp4", max_frames=2)).run()


def test_two_sources_onto_one_output_file_are_refused(tmp_path):
    a, b = _frames(tmp_path / "a", [1, 0]), _frames(tmp_path / "b", [0, 1])
    with pytest.raises(RtsegError, match="two sources would write the same output"):
        StreamPipeline(BrightBackend(), [str(a), str(b)], [str(tmp_path / "seg.mp4")] * 2,
                       StreamOptions(fps=25)).run()
    assert not (tmp_path / "seg.mp4").exists()


def test_save_masks_inside_an_input_folder_is_refused(tmp_path):
    a = _frames(tmp_path / "a", [1, 0])
    with pytest.raises(RtsegError, match="--save-masks .* would overwrite the input"):
        StreamPipeline(BrightBackend(), [str(a)], [], StreamOptions(save_masks=a / "masks", fps=25)).run()
    assert not (a / "masks").exists()
