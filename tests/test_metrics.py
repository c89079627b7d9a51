"""Metrics of docs/networks.md §5 against hand-computed cases."""

import numpy as np
import pytest

from rtseg.metrics import BinaryMetrics, MulticlassMetrics, binary_confusion


def test_binary_hand_computed():
    # image 1: 4 pixels, target 1100, pred 1010 → tp 1 fp 1 fn 1 tn 1
    t1 = np.array([[1, 1], [0, 0]])
    p1 = np.array([[1, 0], [1, 0]])
    # image 2: both empty → Dice/IoU = 1 by convention
    t2 = np.zeros((2, 2), int)
    p2 = np.zeros((2, 2), int)
    m = BinaryMetrics()
    m.update(np.stack([p1, p2]), np.stack([t1, t2]))
    r = m.compute()
    assert r["n_images"] == 2
    assert r["per_image"]["dice"] == pytest.approx((0.5 + 1.0) / 2)
    assert r["per_image"]["iou"] == pytest.approx((1 / 3 + 1.0) / 2)
    assert r["per_image"]["recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert r["per_image"]["precision"] == pytest.approx((0.5 + 1.0) / 2)
    assert r["per_image"]["specificity"] == pytest.approx((0.5 + 1.0) / 2)
    assert r["per_image"]["accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    # global: tp 1, fp 1, fn 1, tn 5
    assert r["global"]["dice"] == pytest.approx(2 / 4)
    assert r["global"]["iou"] == pytest.approx(1 / 3)
    assert r["global"]["accuracy"] == pytest.approx(6 / 8)
    assert r["global"]["specificity"] == pytest.approx(5 / 6)


def test_binary_empty_truth_with_false_positive_scores_zero():
    r = BinaryMetrics()
    r.update(np.array([[[1, 0]]]), np.array([[[0, 0]]]))
    out = r.compute()["per_image"]
    assert out["dice"] == 0 and out["iou"] == 0 and out["precision"] == 0 and out["recall"] == 0


def test_valid_mask_excludes_padding():
    t = np.array([[1, 0, 0]])
    p = np.array([[1, 1, 1]])
    v = np.array([[True, True, False]])
    assert binary_confusion(p, t, v).tolist() == [[1, 1, 0, 0]]


def test_multiclass_with_ignore():
    t = np.array([[0, 0, 1, 1, 255, 2]])
    p = np.array([[0, 1, 1, 1, 0, 0]])
    m = MulticlassMetrics(3, ignore_index=255)
    m.update(p, t)
    r = m.compute()
    # class 0: tp 1, fp 1 (the "2" pixel), fn 1 → 1/3; class 1: tp 2, fp 1 → 2/3; class 2: tp 0, fn 1 → 0
    assert r["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert r["pixel_accuracy"] == pytest.approx(3 / 5)
