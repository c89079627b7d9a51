"""Issue 26, the Python API raises RtsegError with a one-line message for every bad argument — never a
TypeError/ValueError/IndexError/cv2.error from deep inside (``predict(None)``, an empty batch, a 0×0
image, ``batch_size=0``, ``load(123)``, ...).

Real data: a tiny EUNet-S checkpoint tuned on the laparoscopy clip (test_stream), a Kvasir-SEG image.
"""

from __future__ import annotations

import numpy as np
import pytest

import rtseg
from rtseg.errors import RtsegError


@pytest.fixture(scope="module")
def seg(tiny_engine):  # noqa: F811
    return rtseg.load(tiny_engine, threads=1)


@pytest.fixture(scope="module")
def image(kvasir):
    from rtseg.data.folder import find_pairs, read_image

    return read_image(find_pairs(kvasir)[0].image)


PREDICT = {
    "None": (lambda im: dict(images=None), "not NoneType"),
    "a number": (lambda im: dict(images=5), "not int"),
    "an empty list": (lambda im: dict(images=[]), "empty batch"),
    "an empty batch array": (lambda im: dict(images=np.zeros((0, 8, 8, 3), np.uint8)), "empty batch"),
    "a 0x0 image": (lambda im: dict(images=np.zeros((0, 0, 3), np.uint8)), "0x0 pixels"),
    "a 0-row image in a list": (lambda im: dict(images=[im, im[:0]]), "image 1 is 256x0 pixels"),
    "a gray 2-D array": (lambda im: dict(images=im[..., 0]), "got an array of shape (256, 256)"),
    "batch_size 0": (lambda im: dict(images=im, batch_size=0), "batch_size 0 is below 1"),
    "batch_size -1": (lambda im: dict(images=im, batch_size=-1), "batch_size -1 is below 1"),
    "batch_size 2.5": (lambda im: dict(images=im, batch_size=2.5), "batch_size 2.5 is not a whole number"),
    "batch_size '2'": (lambda im: dict(images=im, batch_size="2"), "batch_size '2' is not a whole number"),
    "batch_size 10**12": (lambda im: dict(images=im, batch_size=10 ** 12), "GiB of memory"),
}


@pytest.mark.parametrize("case", list(PREDICT))
def test_predict_bad_arguments_are_one_rtseg_line(seg, image, case):
    make, words = PREDICT[case]
    with pytest.raises(RtsegError) as e:
        seg.predict(**make(image))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_good_arguments_still_predict(seg, image):
    assert seg.predict(image).shape == image.shape[:2]
    assert seg.predict([image, image[:100, :50]], batch_size=1)[1].shape == (100, 50)
    assert seg.predict(np.stack([image, image])).shape == (2, *image.shape[:2])


@pytest.mark.parametrize("call,words", [
    (lambda: rtseg.load(123), "must be a folder path (str or pathlib.Path), not int"),
    (lambda: rtseg.load(["a"]), "not list"),
    (lambda: rtseg.load("x", threads=0), "threads 0 is outside"),
    (lambda: rtseg.load("x", backend=5), "backend must be a backend name"),
    (lambda: rtseg.build_engine(123), "checkpoint must be a folder path"),
    (lambda: rtseg.train(None), "config must be a TrainConfig or a dict"),
], ids=["load(123)", "load(list)", "threads 0", "backend 5", "build_engine(123)", "train(None)"])
def test_load_build_train_bad_arguments_are_one_rtseg_line(call, words):
    with pytest.raises(RtsegError, match=words.replace("(", r"\(").replace(")", r"\)")):
        call()


@pytest.mark.parametrize("kwargs,words", [
    (dict(batch_size=0), "batch_size 0 is below 1"),
    (dict(limit=-1), "limit=-1 must be an integer"),
    (dict(data=5), "data must be a folder path"),
])
def test_evaluate_bad_arguments_are_one_rtseg_line(seg, kvasir, kwargs, words):
    with pytest.raises(RtsegError, match=words):
        seg.evaluate(**{"data": str(kvasir), **kwargs})


@pytest.mark.parametrize("args,kwargs,words", [
    ((None,), {}, "sources must be a path"),
    (([],), {}, "got no source"),
    (("x.mp4", 5), {}, "outputs must be a path"),
    (("x.mp4",), {"no_such_option": 1}, "has no option 'no_such_option'"),
    (("x.mp4", None, "fast"), {}, "options must be a rtseg.stream.StreamOptions"),
])
def test_stream_bad_arguments_are_one_rtseg_line(seg, args, kwargs, words):
    with pytest.raises(RtsegError, match=words):
        seg.stream(*args, **kwargs)
