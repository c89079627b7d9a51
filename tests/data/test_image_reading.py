"""Issue 26, one way to read images and masks: EXIF orientation applied the same way to images and masks
(a real Kvasir-SEG pair saved EXIF-rotated scores as the upright one), and a FIFO (or any non-regular
file) among the images or the per-frame masks is refused with one line instead of hanging the reader.

Real data: Kvasir-SEG images and masks, the PolypGen sequence-11 clip and its masks, the shipped model.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from rtseg.data.folder import read_image, read_mask
from rtseg.errors import RtsegError

from helpers import run_cli_process

N_PAIRS = 4


def _exif(orientation: int) -> bytes:
    e = Image.Exif()
    e[0x0112] = orientation
    return e.tobytes()


#: PIL's transpose of each EXIF orientation (what ImageOps.exif_transpose applies)
_PIL = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90}


def _stored(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores so that ``orientation`` turns them into ``upright`` (the inverse transform)."""
    inverse = {6: 8, 8: 6}.get(orientation, orientation)  # the others undo themselves
    return np.asarray(Image.fromarray(upright).transpose(_PIL[inverse]))


def _pair_folder(root: Path, kvasir: Path, orientation: int | None) -> Path:
    """``root/images/*.jpg`` (JPEG q95) + ``root/masks/*.png`` of the first Kvasir-SEG pairs, stored
    turned and tagged with EXIF ``orientation`` (``None``: upright, no EXIF)."""
    from rtseg.data.folder import find_pairs

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for s in find_pairs(kvasir)[:N_PAIRS]:
        img = np.asarray(Image.open(s.image).convert("RGB"))
        mask = ((np.asarray(Image.open(s.mask).convert("L")) > 127) * 255).astype(np.uint8)
        kw = {} if orientation is None else {"exif": _exif(orientation)}
        if orientation is not None:
            img, mask = _stored(img, orientation), _stored(mask, orientation)
        Image.fromarray(img).save(root / "images" / f"{s.stem}.jpg", quality=95, **kw)
        Image.fromarray(mask).save(root / "masks" / f"{s.stem}.png", **kw)
    return root


@pytest.mark.parametrize("orientation", range(1, 9))
def test_images_and_masks_are_turned_upright_like_pil_does(tmp_path, kvasir, orientation):
    """Every EXIF orientation: read_image and read_mask give what PIL's ImageOps.exif_transpose shows (PNG, lossless)."""
    from rtseg.data.folder import exif_orientation, find_pairs, image_size

    s = find_pairs(kvasir)[0]
    upright = np.asarray(Image.open(s.image).convert("RGB"))[:, :200]  # not square: a wrong turn changes the shape
    stored = _stored(upright, orientation) if orientation > 1 else upright
    f = tmp_path / "x.png"
    Image.fromarray(stored).save(f, exif=_exif(orientation))
    assert exif_orientation(f) == orientation
    assert np.array_equal(np.asarray(ImageOps.exif_transpose(Image.open(f))), upright)  # what viewers show
    assert np.array_equal(read_image(f), upright)
    gray = np.asarray(Image.fromarray(upright).convert("L"))
    Image.fromarray(_stored(gray, orientation) if orientation > 1 else gray).save(f, exif=_exif(orientation))
    assert read_mask(f, binary=False).shape == gray.shape and np.array_equal(read_mask(f, binary=False), gray)
    assert image_size(f) == (gray.shape[1], gray.shape[0])


def test_an_exif_rotated_pair_scores_as_the_upright_one(tmp_path, kvasir):
    """Real Kvasir-SEG pairs saved EXIF-rotated (orientation 6, as phones write them; square 256x256, so a
    mask left sideways would be scored silently) give the shipped model's Dice on the upright pairs."""
    import rtseg
    from rtseg.defaults import default_model_dir

    seg = rtseg.load(default_model_dir(), threads=2)
    upright = seg.evaluate(_pair_folder(tmp_path / "up", kvasir, None), split="all", raw=True)
    turned = seg.evaluate(_pair_folder(tmp_path / "rot", kvasir, 6), split="all", raw=True)
    assert upright["n_images"] == turned["n_images"] == N_PAIRS
    assert upright["per_image"]["dice"] > 0.5, upright["per_image"]
    assert turned["per_image"]["dice"] == pytest.approx(upright["per_image"]["dice"], abs=0.02)


@pytest.mark.slow
def test_a_fifo_among_the_masks_of_eval_video_is_refused_not_waited_on(tmp_path, shared_data, tiny_engine):  # noqa: F811
    masks = tmp_path / "masks"
    masks.mkdir()
    for f in sorted((shared_data / "polypgen-seq11" / "masks").iterdir())[:3]:
        shutil.copy(f, masks / f.name)
    os.mkfifo(masks / "seq11_0004.jpg")
    t0 = time.monotonic()
    r = run_cli_process("eval", "--checkpoint", str(tiny_engine), "--video", str(shared_data / "video" / "colonoscopy_polypgen_seq11.mp4"),
                "--masks", str(masks), "--max-frames", "4", "--out", str(tmp_path / "r.json"), timeout=120)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "seq11_0004.jpg is a FIFO" in last and r.stderr.count("error:") == 1, r.stderr
    assert time.monotonic() - t0 < 100


def test_a_fifo_in_an_image_folder_is_refused_not_waited_on(tmp_path, kvasir, tiny_engine):  # noqa: F811
    data = _pair_folder(tmp_path / "d", kvasir, None)
    os.mkfifo(data / "images" / "zz.jpg")
    os.mkfifo(data / "masks" / "zz.png")
    r = run_cli_process("eval", "--checkpoint", str(tiny_engine), "--data", str(data), "--split", "all", timeout=120)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "zz.jpg is a FIFO" in last and r.stderr.count("error:") == 1, r.stderr
    with pytest.raises(RtsegError, match="zz.png is a FIFO, not a regular file"):
        read_mask(data / "masks" / "zz.png")
    with pytest.raises(RtsegError, match="is a character device"):
        read_image("/dev/zero")


def test_a_video_with_rotation_metadata_is_streamed_upright(tmp_path, clip, backend):
    """A phone-style video whose display matrix says "turn 90°" (``rotate=90``): before, streamed and
    scored lying on its side at 1280×720; now upright at 720×1280, as ffmpeg itself shows it."""
    import subprocess

    import av
    import cv2

    from rtseg.stream import StreamOptions, StreamPipeline
    from rtseg.stream.sinks import Sink

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.fail("needs the ffmpeg CLI to write the rotation metadata: apt-get install ffmpeg (scripts/test.sh does)")
    rot = tmp_path / "rot.mp4"
    subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-i", str(clip), "-t", "1", "-an", "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(rot)], check=True)
    subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-i", str(rot), "-frames:v", "1", str(tmp_path / "f0.png")],
                   check=True)
    upright = cv2.cvtColor(cv2.imread(str(tmp_path / "f0.png")), cv2.COLOR_BGR2RGB)

    class First(Sink):
        frames: list = []

        def write(self, frame: av.VideoFrame) -> None:
            self.frames.append(frame.to_ndarray(format="rgb24"))

    sink = First()
    StreamPipeline(backend, [str(rot)], [sink], StreamOptions(overlay=False, handle_signals=False, max_frames=3)).run()
    assert upright.shape == (1280, 720, 3) and sink.frames[0].shape == upright.shape, sink.frames[0].shape
    assert np.abs(sink.frames[0].astype(int) - upright).mean() < 3.0
