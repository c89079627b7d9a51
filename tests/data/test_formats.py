"""Dataset layouts of rtseg.data.formats: real data where it exists (shared/data), tiny fixtures otherwise.

Expected values are computed here independently of the readers (raw file reads, hand-written tables,
hand-counted pixels), so each test fails if a reader is wrong.
"""

import base64
import io
import json
import shutil
import zlib

import cv2
import numpy as np
import pytest

from rtseg.data.folder import find_pairs, split_samples
from rtseg.data.formats import (
    FORMATS,
    CamVidFormat,
    CityscapesFormat,
    CocoFormat,
    FsocoFormat,
    PolypFormat,
    detect_format,
    get_format,
)
from rtseg.errors import RtsegError


def _gray_gt127(path):
    return (cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)


def _rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def _stems(samples):
    return [s.stem for s in samples]


# ------------------------------------------------------------------------------------------------ registry

def test_get_format_names_aliases_and_unknown():
    for alias in ("polyp", "kvasir", "Kvasir-Instrument", "cvc", "POLYPGEN"):
        f = get_format(alias)
        assert isinstance(f, PolypFormat) and f.name == "polyp"
    assert isinstance(get_format("cityscapes"), CityscapesFormat)
    assert isinstance(get_format("coco"), CocoFormat)
    assert isinstance(get_format("fsoco"), FsocoFormat)
    assert isinstance(get_format("camvid"), CamVidFormat)
    with pytest.raises(RtsegError) as e:
        get_format("pascal-voc")
    msg = str(e.value)
    assert "pascal-voc" in msg and all(n in msg for n in ("polyp", "cityscapes", "coco", "fsoco", "camvid"))
    assert "\n" not in msg
    assert set(FORMATS) >= {"polyp", "kvasir", "kvasir-instrument", "cvc", "polypgen", "cityscapes", "coco", "fsoco", "camvid"}


def test_detect_format_unknown_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.txt").write_text("x")
    with pytest.raises(RtsegError, match="cannot tell the dataset layout"):
        detect_format(tmp_path)
    with pytest.raises(RtsegError, match="does not exist"):
        detect_format(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------ polyp, real data

def test_polyp_kvasir_real(kvasir):
    fmt = get_format("kvasir")
    assert detect_format(kvasir) == "polyp"
    assert fmt.labels.binary and fmt.labels.num_classes == 1 and fmt.labels.ignore_index is None
    assert fmt.labels.palette == [[0, 0, 0], [0, 255, 0]]
    parts = fmt.splits(kvasir)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [798, 100, 100]
    ref = split_samples(find_pairs(kvasir))
    assert all(_stems(parts[k]) == _stems(ref[k]) for k in parts)
    samples = fmt.all_samples(kvasir)
    assert len(samples) == 998
    areas = []
    for s in samples[::50]:
        img, m = fmt.read(s)
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
        assert m.shape == (256, 256) and m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
        assert np.array_equal(img, _rgb(s.image))  # RGB, not BGR
        assert np.array_equal(m, _gray_gt127(s.mask))
        areas.append(m.mean())
    assert 0.05 < np.mean(areas) < 0.3  # SOURCE.md: mean polyp area 15 %


def test_polyp_polypgen_real_empty_masks(shared_data):
    root = shared_data / "polypgen-test"
    assert detect_format(root) == "polyp"
    fmt = get_format("polypgen")
    samples = fmt.all_samples(root)
    assert len(samples) == 150
    empty = 0
    for s in samples:
        img, m = fmt.read(s)
        assert img.shape[:2] == m.shape and set(np.unique(m)) <= {0, 1}
        empty += int(m.max() == 0)
    assert empty == 14  # SOURCE.md: 14 of 150 masks are empty


def test_polyp_cvc_real(shared_data):
    root = shared_data / "cvc-clinicdb-256"
    assert detect_format(root) == "polyp"
    fmt = get_format("cvc")
    parts = fmt.splits(root)
    assert sum(len(v) for v in parts.values()) == 609
    assert not (set(_stems(parts["train"])) & set(_stems(parts["test"])))
    for s in fmt.all_samples(root):
        _, m = fmt.read(s)
        assert m.shape == (256, 256) and 0 < m.mean() < 1  # SOURCE.md: no empty masks


# ------------------------------------------------------------------------------------------------ polyp, original layouts

def _smallest_pairs(root, n):
    pairs = find_pairs(root)
    return sorted(pairs, key=lambda s: s.image.stat().st_size)[:n]


def test_polypgen_original_layout(tmp_path, shared_data):
    src = _smallest_pairs(shared_data / "polypgen-test", 4)
    layout = [("data_C1", "images_C1", "masks_C1"), ("data_C1", "images_C1", "masks_C1"),
              ("data_C2", "images_C2", "masks_C2"), ("sequenceData/positive/seq1", "images_seq1", "masks_seq1")]
    expected = {}
    for s, (d, im, ma) in zip(src, layout):
        (tmp_path / d / im).mkdir(parents=True, exist_ok=True)
        (tmp_path / d / ma).mkdir(parents=True, exist_ok=True)
        shutil.copy(s.image, tmp_path / d / im / s.image.name)
        shutil.copy(s.mask, tmp_path / d / ma / f"{s.stem}_mask.jpg")
        expected[d.replace("/", "__") + "__" + s.stem] = s
    (tmp_path / "docs").mkdir()
    shutil.copy(src[0].image, tmp_path / "docs" / "example.jpg")  # not part of a pair folder: ignored

    assert detect_format(tmp_path) == "polyp"
    fmt = get_format("polypgen")
    samples = fmt.all_samples(tmp_path)
    assert _stems(samples) == sorted(expected)
    for s in samples:
        img, m = fmt.read(s)
        ref = expected[s.stem]
        assert np.array_equal(img, _rgb(ref.image)) and np.array_equal(m, _gray_gt127(ref.mask))
    parts = fmt.splits(tmp_path)
    assert sorted(sum((_stems(v) for v in parts.values()), [])) == sorted(expected)

    (tmp_path / "data_C2" / "masks_C2" / f"{src[2].stem}_mask.jpg").unlink()
    with pytest.raises(RtsegError, match=f"without a mask: {src[2].stem}"):
        fmt.splits(tmp_path)


def test_cvc_original_layout(tmp_path, shared_data):
    src = find_pairs(shared_data / "cvc-clinicdb-256")[:3]
    (tmp_path / "Original").mkdir()
    (tmp_path / "Ground Truth").mkdir()
    expected = {}
    for s in src:
        rgb = _rgb(s.image)
        gt = _gray_gt127(s.mask)
        assert cv2.imwrite(str(tmp_path / "Original" / f"{s.stem}.tif"), rgb[..., ::-1])
        assert cv2.imwrite(str(tmp_path / "Ground Truth" / f"{s.stem}.tif"), gt * 255)
        expected[s.stem] = (rgb, gt)
    assert detect_format(tmp_path) == "polyp"
    fmt = get_format("cvc")
    samples = fmt.all_samples(tmp_path)
    assert _stems(samples) == sorted(expected)  # pair folder directly in ROOT: no prefix
    for s in samples:
        img, m = fmt.read(s)
        assert s.image.suffix == ".tif" and np.array_equal(img, expected[s.stem][0])
        assert np.array_equal(m, expected[s.stem][1]) and m.sum() > 0


# ------------------------------------------------------------------------------------------------ CamVid

def test_camvid_real(shared_data):
    root = shared_data / "camvid-val"
    assert detect_format(root) == "camvid"
    fmt = get_format("camvid")
    lab = fmt.labels
    assert not lab.binary and lab.num_classes == 11 and lab.ignore_index == 255
    assert lab.class_names[0] == "Sky" and lab.class_names[10] == "Bicyclist" and len(lab.palette) == 11
    assert lab.palette[3] == [128, 64, 128] and lab.palette[10] == [0, 128, 192]
    parts = fmt.splits(root)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [81, 10, 10]
    seen = set()
    n_void = 0
    for s in fmt.all_samples(root):
        img, m = fmt.read(s)
        raw = cv2.imread(str(s.mask), cv2.IMREAD_UNCHANGED)
        assert img.shape == (360, 480, 3) and m.shape == (360, 480) and m.dtype == np.uint8
        assert np.all(m[raw == 11] == 255)
        keep = raw <= 10
        assert np.array_equal(m[keep], raw[keep])
        n_void += int((raw == 11).sum())
        seen |= set(np.unique(m).tolist())
    assert n_void > 0 and seen == set(range(11)) | {255}


def test_camvid_segnet_layout(tmp_path, shared_data):
    src = find_pairs(shared_data / "camvid-val")[:6]
    official = {"train": src[:2], "val": src[2:4], "test": src[4:]}
    for split, samples in official.items():
        (tmp_path / split).mkdir()
        (tmp_path / f"{split}annot").mkdir()
        for s in samples:
            shutil.copy(s.image, tmp_path / split / s.image.name)
            shutil.copy(s.mask, tmp_path / f"{split}annot" / s.mask.name)
    assert detect_format(tmp_path) == "camvid"
    fmt = get_format("camvid")
    parts = fmt.splits(tmp_path)
    assert {k: _stems(v) for k, v in parts.items()} == {k: _stems(v) for k, v in official.items()}
    img, m = fmt.read(parts["val"][0])
    raw = cv2.imread(str(official["val"][0].mask), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(m, np.where(raw == 11, 255, raw).astype(np.uint8))


# ------------------------------------------------------------------------------------------------ Cityscapes

# labelId → trainId, copied by hand from cityscapesScripts helpers/labels.py; everything else → 255
_CS_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _write_cityscapes(root, split, city, idx, label_ids, rgb):
    stem = f"{city}_{idx:06d}_000019"
    (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
    (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"), rgb[..., ::-1])
    gt = root / "gtFine" / split / city
    assert cv2.imwrite(str(gt / f"{stem}_gtFine_labelIds.png"), label_ids)
    # decoys the reader must not pick up
    assert cv2.imwrite(str(gt / f"{stem}_gtFine_color.png"), rgb[..., ::-1])
    assert cv2.imwrite(str(gt / f"{stem}_gtFine_instanceIds.png"), np.full_like(label_ids, 26))
    return stem


def test_cityscapes_fixture(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.arange(35, dtype=np.uint8).reshape(5, 7)  # every labelId 0..33 plus 34
    ids[0, :4] = [7, 26, 0, 33]
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    train = [_write_cityscapes(tmp_path, "train", city, i, ids, rgb) for city in ("aachen", "bremen") for i in range(5)]
    val = [_write_cityscapes(tmp_path, "val", "frankfurt", i, ids, rgb) for i in range(2)]
    _write_cityscapes(tmp_path, "test", "berlin", 0, np.zeros_like(ids), rgb)  # no public test labels: unused

    assert detect_format(tmp_path) == "cityscapes"
    fmt = get_format("cityscapes")
    lab = fmt.labels
    assert lab.num_classes == 19 and not lab.binary and lab.ignore_index == 255 and len(lab.class_names) == 19
    assert lab.class_names[13] == "car" and lab.palette[13] == [0, 0, 142] and lab.palette[0] == [128, 64, 128]
    assert lab.class_names[18] == "bicycle" and lab.palette[18] == [119, 11, 32]

    parts = fmt.splits(tmp_path)
    assert _stems(parts["test"]) == sorted(val)  # test = official val
    assert len(parts["val"]) == 1 and len(parts["train"]) == 9  # val = 10 % of official train
    assert sorted(_stems(parts["train"]) + _stems(parts["val"])) == sorted(train)
    assert parts == fmt.splits(tmp_path)
    assert all(s.mask.name.endswith("_gtFine_labelIds.png") for v in parts.values() for s in v)

    img, m = fmt.read(parts["test"][0])
    assert np.array_equal(img, rgb)
    expected = np.array([[_CS_TRAIN_ID.get(int(v), 255) for v in row] for row in ids], np.uint8)
    assert np.array_equal(m, expected)
    assert m[0, :4].tolist() == [0, 13, 255, 18]
    assert (m != 255).sum() == 19 + 3  # the 19 trainable ids once each, plus 7, 26, 33 again in row 0

    (tmp_path / "gtFine" / "val" / "frankfurt" / f"{val[1]}_gtFine_labelIds.png").unlink()
    with pytest.raises(RtsegError, match=val[1]):
        fmt.splits(tmp_path)


# ------------------------------------------------------------------------------------------------ COCO

def test_coco_fixture(tmp_path, kvasir):
    from pycocotools import mask as mask_utils

    H, W = 48, 64
    crop = cv2.imread(str(find_pairs(kvasir)[0].image))[:H, :W]
    for d, name in (("val2017", "000000000001.jpg"), ("val2017", "000000000002.jpg"), ("train2017", "000000000003.jpg")):
        (tmp_path / d).mkdir(exist_ok=True)
        assert cv2.imwrite(str(tmp_path / d / name), crop)
    # crowd region: uncompressed RLE, column-major — columns 25..34, rows 15..24
    counts = [25 * H + 15] + [10, H - 10] * 9 + [10]
    counts.append(H * W - sum(counts))
    # compressed RLE of a 3x4 block (rows 40..42, cols 50..53) on image 2
    block = np.zeros((H, W), np.uint8, order="F")
    block[40:43, 50:54] = 1
    rle = mask_utils.encode(block)
    rle["counts"] = rle["counts"].decode("ascii")
    cats = [{"id": 1, "name": "polyp"}, {"id": 2, "name": "crowd"}]
    val = {"images": [{"id": 1, "file_name": "000000000001.jpg", "height": H, "width": W},
                      {"id": 2, "file_name": "000000000002.jpg", "height": H, "width": W}],
           "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 200.0, "bbox": [10, 10, 20, 10],
                            "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]},
                           {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 1, "area": 100.0, "bbox": [25, 15, 10, 10],
                            "segmentation": {"counts": counts, "size": [H, W]}},
                           {"id": 12, "image_id": 2, "category_id": 2, "iscrowd": 1, "area": 12.0, "bbox": [50, 40, 4, 3],
                            "segmentation": rle}],
           "categories": cats}
    train = {"images": [{"id": 3, "file_name": "000000000003.jpg", "height": H, "width": W}], "annotations": [], "categories": cats}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(val))
    (tmp_path / "annotations" / "instances_train2017.json").write_text(json.dumps(train))

    assert detect_format(tmp_path) == "coco"
    fmt = get_format("coco")
    assert fmt.labels.binary and fmt.labels.num_classes == 1
    parts = fmt.splits(tmp_path)
    assert {k: _stems(v) for k, v in parts.items()} == {
        "train": ["000000000003"], "val": ["000000000001", "000000000002"], "test": ["000000000001", "000000000002"]}
    s1, s2 = parts["val"]
    assert s1.mask is None and s1.ann[1] == 1 and s1.ann[0].endswith("instances_val2017.json")

    img, m = fmt.read(s1)
    assert img.shape == (H, W, 3) and m.shape == (H, W) and m.dtype == np.uint8
    expected = np.zeros((H, W), np.uint8)
    expected[10:20, 10:30] = 1  # polygon: 20 x 10 = 200 px
    expected[15:25, 25:35] = 1  # crowd RLE: 10 x 10 = 100 px, 5 x 5 = 25 px overlap
    assert m.sum() == 200 + 100 - 25 == 275
    assert np.array_equal(m, expected)
    _, m2 = fmt.read(s2)
    assert m2.sum() == 12 and np.array_equal(m2, block)
    _, m3 = fmt.read(parts["train"][0])
    assert m3.sum() == 0  # image without annotations: a negative

    (tmp_path / "train2017" / "000000000003.jpg").unlink()
    with pytest.raises(RtsegError, match="000000000003.jpg"):
        fmt.splits(tmp_path)


# ------------------------------------------------------------------------------------------------ FSOCO

def _sly_encode_paletted(mask):
    """Supervisely SDK ``Bitmap.data_2_base64``: 1-bit paletted PNG, index 0 transparent, zlib, base64."""
    from PIL import Image

    img = Image.fromarray(np.asarray(mask, np.uint8))
    img.putpalette([0, 0, 0, 255, 255, 255])
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0, optimize=0)
    return base64.b64encode(zlib.compress(buf.getvalue())).decode("utf-8")


def _sly_encode_cv2(arr):
    ok, png = cv2.imencode(".png", arr)
    assert ok
    return base64.b64encode(zlib.compress(png.tobytes())).decode("utf-8")


def _bitmap(data, origin, cls="blue_cone"):
    return {"classTitle": cls, "geometryType": "bitmap", "tags": [], "bitmap": {"data": data, "origin": origin}}


def test_fsoco_fixture(tmp_path, shared_data):
    H, W = 30, 40
    crop = cv2.imread(str(find_pairs(shared_data / "camvid-val")[0].image))[:H, :W]
    root = tmp_path / "fsoco_segmentation_train"
    for team, name in (("teamA", "amz_00001.png"), ("teamB", "amz_00001.jpg")):
        (root / team / "img").mkdir(parents=True)
        (root / team / "ann").mkdir()
        assert cv2.imwrite(str(root / team / "img" / name), crop)
    (root / "meta.json").write_text(json.dumps({"classes": [{"title": "blue_cone", "shape": "bitmap"}]}))

    cone = np.array([[0, 1, 1, 1, 0, 0],  # 5 x 6 with a hole, placed at x=12, y=7
                     [0, 1, 0, 1, 1, 0],
                     [1, 1, 0, 1, 1, 0],
                     [1, 1, 1, 1, 1, 1],
                     [0, 0, 0, 0, 0, 1]], np.uint8)
    bgra = np.full((2, 3, 4), 255, np.uint8)  # colour everywhere; only the alpha marks the object
    bgra[..., 3] = [[255, 0, 0], [0, 0, 255]]
    gray = np.full((3, 3), 255, np.uint8)  # single channel, origin at the corner: clipped to 2 x 2
    objects = [_bitmap(_sly_encode_paletted(cone), [12, 7]),
               _bitmap(_sly_encode_cv2(bgra), [20, 20], "yellow_cone"),
               _bitmap(_sly_encode_cv2(gray), [38, 28], "orange_cone"),
               {"classTitle": "large_orange_cone", "geometryType": "polygon", "tags": [],
                "points": {"exterior": [[2, 2], [6, 2], [6, 5], [2, 5]], "interior": []}},
               {"classTitle": "blue_cone", "geometryType": "rectangle", "tags": [],
                "points": {"exterior": [[0, 0], [39, 29]], "interior": []}}]
    ann = {"description": "", "tags": [], "size": {"height": H, "width": W}, "objects": objects}
    (root / "teamA" / "ann" / "amz_00001.png.json").write_text(json.dumps(ann))
    (root / "teamB" / "ann" / "amz_00001.jpg.json").write_text(json.dumps({"size": {"height": H, "width": W}, "objects": []}))

    assert detect_format(root) == "fsoco"
    fmt = get_format("fsoco")
    assert fmt.labels.binary and fmt.labels.num_classes == 1
    samples = fmt.all_samples(root)
    assert _stems(samples) == ["teamA__amz_00001", "teamB__amz_00001"]
    assert sorted(sum((_stems(v) for v in fmt.splits(root).values()), [])) == _stems(samples)

    img, m = fmt.read(samples[0])
    assert img.shape == (H, W, 3) and np.array_equal(img, crop[..., ::-1])
    expected = np.zeros((H, W), np.uint8)
    expected[7:12, 12:18] = cone
    expected[20, 20] = expected[21, 22] = 1
    expected[28:30, 38:40] = 1
    expected[2:6, 2:7] = 1  # fillPoly includes the boundary: rows 2..5, cols 2..6
    assert np.array_equal(m, expected)
    assert m.sum() == cone.sum() + 2 + 4 + 20
    _, m_b = fmt.read(samples[1])
    assert m_b.shape == (H, W) and m_b.sum() == 0

    # the bounding-box release (rectangles only) is refused, not read as empty masks
    (root / "teamB" / "ann" / "amz_00001.jpg.json").write_text(json.dumps({"objects": [objects[-1]]}))
    with pytest.raises(RtsegError, match="rectangle"):
        fmt.read(samples[1])
    (root / "teamB" / "ann" / "amz_00001.jpg.json").unlink()
    with pytest.raises(RtsegError, match="without an annotation: amz_00001.jpg"):
        fmt.splits(root)
