"""Polyp folder reader, pairing errors, deterministic split, geometry."""

import shutil

import numpy as np
import pytest

from rtseg.data.folder import find_pairs, read_sample, split_samples, stem_key
from rtseg.data.transforms import Preprocessor, compute_geometry, unplace
from rtseg.errors import RtsegError


def test_kvasir_pairs_and_masks(kvasir):
    samples = find_pairs(kvasir)
    assert len(samples) == 998
    img, mask = read_sample(samples[0])
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1} and 0 < mask.mean() < 1


def test_split_is_deterministic_and_disjoint(kvasir):
    samples = find_pairs(kvasir)
    a = split_samples(samples)
    b = split_samples(list(reversed(samples)))
    assert [len(a[k]) for k in ("train", "val", "test")] == [798, 100, 100]
    for k in a:
        assert [s.stem for s in a[k]] == [s.stem for s in b[k]]
    stems = [set(s.stem for s in a[k]) for k in a]
    assert not (stems[0] & stems[1]) and not (stems[0] & stems[2]) and not (stems[1] & stems[2])
    # the rule is sha256 of the stem: pinned values guard against silent changes across versions
    assert stem_key("cju0qkwl35piu0993l0dewei2")[:12] == __import__("hashlib").sha256(b"cju0qkwl35piu0993l0dewei2").hexdigest()[:12]
    first_test = sorted(a["test"], key=lambda s: stem_key(s.stem))[0].stem
    assert stem_key(first_test) > max(stem_key(s.stem) for s in a["val"])


def test_mask_suffix_pairs(tmp_path, kvasir):
    src = find_pairs(kvasir)[:3]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for s in src:
        shutil.copy(s.image, tmp_path / "images" / s.image.name)
        shutil.copy(s.mask, tmp_path / "masks" / f"{s.stem}_mask.jpg")
    assert [p.stem for p in find_pairs(tmp_path)] == sorted(s.stem for s in src)


def test_unpaired_files_are_listed(tmp_path, kvasir):
    src = find_pairs(kvasir)[:3]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for s in src:
        shutil.copy(s.image, tmp_path / "images" / s.image.name)
    shutil.copy(src[0].mask, tmp_path / "masks" / src[0].mask.name)
    with pytest.raises(RtsegError, match=r"2 image\(s\) without a mask: .*" + src[1].stem):
        find_pairs(tmp_path)


def test_folder_without_masks_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(RtsegError, match="no masks/ folder"):
        find_pairs(tmp_path)


def test_letterbox_geometry_roundtrip():
    g = compute_geometry((720, 1280), (256, 256), "letterbox")
    assert g.box == (56, 200, 0, 256)
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[:, 640:] = 255
    net, g2 = Preprocessor((256, 256), "letterbox")(frame)
    assert g2 == g and net[:56].max() == 0 and net[200:].max() == 0
    mask = (net[..., 0] > 127).astype(np.uint8)
    back = unplace(mask, g)
    assert back.shape == (720, 1280)
    assert back[:, :630].max() == 0 and back[:, 650:].min() == 1


# -- grouped split (issue 21): the frames of one video / sequence never straddle two parts ------------------
def _parts_of_groups(root):
    from rtseg.data.folder import sample_groups
    from rtseg.data.formats import get_format

    fmt = get_format("polyp")
    parts = fmt.splits(root)
    groups = sample_groups(fmt.samples(root), root)
    seen: dict[str, set] = {}
    for part, samples in parts.items():
        for s in samples:
            seen.setdefault(groups[s.stem], set()).add(part)
    return parts, groups, seen


@pytest.mark.parametrize("folder, n_groups", [("cvc-clinicdb-256", 29), ("polypgen-negatives", 18)])
def test_grouped_split_keeps_every_video_in_one_part(shared_data, folder, n_groups):
    """CVC-ClinicDB's 29 videos (sequences.csv) and the 18 polyp-free PolypGen sequences (seqN_ prefix):
    no group in two parts, every part non-empty, about 80/10/10 of the frames."""
    parts, groups, seen = _parts_of_groups(shared_data / folder)
    assert len(seen) == n_groups
    assert all(len(p) == 1 for p in seen.values()), {g: p for g, p in seen.items() if len(p) > 1}
    n = sum(len(v) for v in parts.values())
    assert all(parts[k] for k in parts) and 0.7 < len(parts["train"]) / n < 0.9


def test_grouped_split_on_polypgen_sequence_frames(shared_data):
    """PolypGen's sequence frames (``14_endocv2021_positive_512`` → seq14, ``176OLCV1_100H0006`` → OLCV1_176)
    stay together; its single centre frames are split one by one."""
    parts, groups, seen = _parts_of_groups(shared_data / "polypgen-train-part")
    assert groups["11_endocv2021_positive_1344"] == "seq11" and groups["102OLCV1_100H0006"] == "OLCV1_102"
    assert groups["C3_EndoCV2021_00100"] == "C3_EndoCV2021_00100"  # a single centre frame: its own group
    multi = {g for g in seen if sum(1 for v in groups.values() if v == g) > 1}
    assert len(multi) >= 20 and all(len(seen[g]) == 1 for g in multi)
    assert any(g.startswith("seq") for g in multi) and any(g.startswith("OLCV1_") for g in multi)


def test_grouped_split_without_groups_is_the_per_stem_hash_split(kvasir):
    """Kvasir-SEG has no video ids: the grouped rule gives exactly the per-stem hash split."""
    from rtseg.data.folder import grouped_split

    samples = find_pairs(kvasir)
    order = sorted(samples, key=lambda s: stem_key(s.stem))
    plain = {"train": order[:798], "val": order[798:898], "test": order[898:]}
    grouped = grouped_split(samples, kvasir)
    for k in plain:
        assert sorted(s.stem for s in plain[k]) == [s.stem for s in grouped[k]]


def test_group_table_and_split_record(tmp_path, kvasir):
    """A groups.csv beside images/ and masks/ groups its stems; split.json records group → part;
    a table without the right header is a one-line error."""
    import json

    from rtseg.data.folder import grouped_split, write_split

    src = find_pairs(kvasir)[:20]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for s in src:
        shutil.copy(s.image, tmp_path / "images" / s.image.name)
        shutil.copy(s.mask, tmp_path / "masks" / s.mask.name)
    rows = [f"{s.stem},{i % 4}" for i, s in enumerate(src)]
    (tmp_path / "groups.csv").write_text("stem,video\n" + "\n".join(rows) + "\n")
    parts = grouped_split(find_pairs(tmp_path), tmp_path)
    where = {s.stem: k for k, v in parts.items() for s in v}
    for g in range(4):
        assert len({where[s.stem] for i, s in enumerate(src) if i % 4 == g}) == 1
    write_split(tmp_path / "split.json", tmp_path, parts)
    rec = json.loads((tmp_path / "split.json").read_text())
    assert set(rec["groups"]) == {"video0", "video1", "video2", "video3"} and "group" in rec["rule"]
    (tmp_path / "groups.csv").write_text("name,where\na,b\n")
    with pytest.raises(RtsegError, match="needs a header 'stem,"):
        grouped_split(find_pairs(tmp_path), tmp_path)


@pytest.mark.parametrize("kind", ["png8-01", "png8-0255", "png16-01", "png16-065535", "jpg"])
def test_one_mask_reader_for_images_and_video(tmp_path, kvasir, kind):
    """Issue 26: 0/1 and 0/255 masks, 8 and 16 bit, PNG and JPEG read the same in image and video evaluation."""
    import cv2

    from rtseg.data.folder import read_mask
    from rtseg.video_eval import read_truth

    want = read_mask(find_pairs(kvasir)[0].mask)
    assert 0 < want.mean() < 1
    scale = {"png8-01": (np.uint8, 1), "png8-0255": (np.uint8, 255), "png16-01": (np.uint16, 1),
             "png16-065535": (np.uint16, 65535), "jpg": (np.uint8, 255)}[kind]
    path = tmp_path / ("m.jpg" if kind == "jpg" else "m.png")
    cv2.imwrite(str(path), (want.astype(np.int64) * scale[1]).astype(scale[0]))
    for got in (read_mask(path), read_truth(path, True)):
        agree = (got == want).mean()
        assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 1} and agree > (0.99 if kind == "jpg" else 0.9999)
