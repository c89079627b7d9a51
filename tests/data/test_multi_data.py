"""Issue 14 (items 1, 2): training on several data folders (own splits, concatenated train parts,
per-dataset metrics, sampling weights, resume) and the "robust" augmentation preset, on real images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rtseg.calib.images import default_calib_source
from rtseg.checkpoint import load_checkpoint
from rtseg.commands.train import train as train_cmd
from rtseg.data.augment import SpecularHighlights, make_augmentation
from rtseg.data.folder import read_image, read_mask
from rtseg.data.formats import get_format
from rtseg.errors import RtsegError
from rtseg.evaluation import resolve_samples
from rtseg.training.loop import TrainConfig, _datasets, _loader, _split_data, train

from helpers import TINY_WIDTHS


@pytest.fixture(scope="module")
def folders(shared_data):
    return [str(shared_data / "kvasir-seg-256"), str(shared_data / "polypgen-train-part")]


def _cfg(folders, out, **kw):
    base = dict(model="eunet-s", model_kwargs={"widths": list(TINY_WIDTHS)}, data=list(folders), out=str(out),
                img_size=(64, 64), epochs=2, batch_size=8, lr=1e-2, max_images=40, threads=1, progress=False)
    return TrainConfig(**(base | kw))


@pytest.mark.slow
def test_two_folders_train_validate_and_resume_exactly(tmp_path, folders):
    full = train(_cfg(folders, tmp_path / "a"), log=lambda *a: None)
    names = ["kvasir-seg-256", "polypgen-train-part"]
    for rec in full["history"]:  # both folders contributed training images in every epoch
        assert set(rec["train_images"]) == set(names) and all(n > 0 for n in rec["train_images"].values()), rec
        assert sum(rec["train_images"].values()) == 64 and set(rec["datasets"]) == set(names)
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(set(ln["val_per_dataset"]) == set(names) and "per_image" in ln["val"] for ln in lines)
    _, meta = load_checkpoint(tmp_path / "a")
    assert [d["name"] for d in meta.data["datasets"]] == names and meta.data["root"] == meta.data["datasets"][0]["root"]
    assert all(d["fingerprint"] and d["format"] == "polyp" and d["n_train"] == 32 for d in meta.data["datasets"])
    assert set(meta.metrics["val_per_dataset"]) == set(names) and set(meta.metrics["test_per_dataset"]) == set(names)
    assert set(full["val_per_dataset"]) == set(names) and set(full["test_per_dataset"]) == set(names)
    assert full["val"]["n_images"] == sum(m["n_images"] for m in full["val_per_dataset"].values())
    split = json.loads((tmp_path / "a" / "split.json").read_text())["datasets"]
    for rec, root in zip(split, folders):  # each folder keeps its own deterministic split
        own = get_format("polyp").splits(root)
        for part, n in (("train", 32), ("val", 4), ("test", 4)):
            assert rec[part] == [s.stem for s in own[part][:n]]
    # killed after epoch 1, then resumed: equal to the uninterrupted run
    train(_cfg(folders, tmp_path / "b", stop_after_epochs=1), log=lambda *a: None)
    logs = []
    resumed = train(_cfg(folders, tmp_path / "b", resume=True), log=logs.append)
    assert any("resumed from epoch 1" in ln for ln in logs)
    wa, _ = load_checkpoint(tmp_path / "a" / "last")
    wb, _ = load_checkpoint(tmp_path / "b" / "last")
    for (k, a), (_, b) in zip(wa.state_dict().items(), wb.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    assert [h["train_loss"] for h in full["history"]] == pytest.approx([h["train_loss"] for h in resumed["history"]], rel=1e-5)


def _drawn(folders, tmp_path, weights):
    cfg = _cfg(folders, tmp_path, max_images=60, data_weights=weights, augment=False)
    fs = _split_data(cfg, tmp_path, False, lambda *a: None)
    _, _, train_ds, _ = _datasets(cfg, fs, [0.5] * 3, [0.25] * 3)
    counts = np.zeros(2, np.int64)
    _, loader = _loader(cfg, train_ds, torch.Generator().manual_seed(0), 0, 1)
    for _ in range(10):  # ten epochs of index draws (no images decoded: the sampler alone)
        list(loader.sampler)
        counts += loader.sampler.counts
    return counts / counts.sum()


def test_sampling_weights_shift_the_share_of_each_folder(tmp_path, folders):
    even = _drawn(folders, tmp_path, [1, 1])
    heavy = _drawn(folders, tmp_path, [1, 4])
    assert abs(even[0] - 0.5) < 0.08, even  # equal-size train parts, equal weights: half each
    assert heavy[1] > 0.7 and heavy[1] > even[1] + 0.2, (even, heavy)  # expected 0.8


def test_robust_augmentation_keeps_mask_aligned_and_is_seeded(kvasir):
    import albumentations as A

    stem = sorted(p.stem for p in (kvasir / "images").iterdir())[0]
    img = read_image(next((kvasir / "images").glob(stem + ".*")))
    mask = read_mask(next((kvasir / "masks").glob(stem + ".*")))
    aug = make_augmentation("robust")
    outs = []
    for seed in (7, 7, 8):
        aug.set_random_seed(seed)
        outs.append(aug(image=img, masks=[mask, np.ones_like(mask)]))
    assert np.array_equal(outs[0]["image"], outs[1]["image"]) and np.array_equal(outs[0]["masks"][0], outs[1]["masks"][0])
    assert not np.array_equal(outs[0]["image"], outs[2]["image"])
    # alignment: encode the mask into the image's blue channel, run only the geometric part, compare
    geo = A.Compose([t for t in aug.transforms if isinstance(t, A.DualTransform)], seed=None)
    tagged = img.copy()
    tagged[..., 2] = mask * 255
    moved = 0
    for seed in range(12):
        geo.set_random_seed(seed)
        o = geo(image=tagged, masks=[mask, np.ones_like(mask)])
        m, inside = o["masks"][0], o["masks"][1] > 0
        moved += not np.array_equal(m, mask)
        agree = ((o["image"][..., 2] > 127) == (m > 0))[inside].mean()
        assert agree > 0.99, (seed, agree)
    assert moved >= 6, moved
    # specular highlights brighten small spots of the image only
    sp = A.Compose([SpecularHighlights(count=(3, 3), p=1.0)], seed=1)
    o = sp(image=img, mask=mask)
    assert np.array_equal(o["mask"], mask) and (o["image"].astype(int) - img).min() >= 0
    changed = (o["image"] != img).any(-1).mean()
    assert 0 < changed < 0.1 and o["image"][(o["image"] != img).any(-1)].max() >= 250
    with pytest.raises(RtsegError, match="unknown augmentation"):
        make_augmentation("strong")


def test_cli_two_folders_and_missing_second_folder(tmp_path, folders):
    args = ["--model", "eunet-s", "--widths", "8,16,32,64", "--img-size", "64", "--epochs", "1", "--batch-size", "8",
            "--max-images", "20", "--threads", "1", "--quiet", "--augment", "robust", "--data-weights", "1,2"]
    r = CliRunner().invoke(train_cmd, [*args, "--data", folders[0], "--data", folders[1], "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert set(s["val_per_dataset"]) == {"kvasir-seg-256", "polypgen-train-part"}
    _, meta = load_checkpoint(tmp_path / "r")
    assert meta.training["augment"] == "robust" and meta.data["weights"] == [1.0, 2.0]
    # downstream readers of model.json data.root use the first folder: its own test / train split
    samples, _, desc = resolve_samples(None, None, meta.to_dict())
    assert [s.stem for s in samples] == [s.stem for s in get_format("polyp").splits(folders[0])["test"]] and "test split" in desc
    files, root, _ = default_calib_source(meta)
    assert str(root) == str(Path(folders[0]).resolve()) and files
    r = CliRunner().invoke(train_cmd, [*args, "--data", folders[0], "--data", str(tmp_path / "nope"),
                                       "--out", str(tmp_path / "m")])
    assert r.exit_code != 0 and isinstance(r.exception, RtsegError)
    assert "nope does not exist" in str(r.exception) and "\n" not in str(r.exception)


def test_init_weights_fine_tunes_from_a_checkpoint_and_refuses_another_network(tmp_path, folders):
    """--init-weights: epoch 0 of the new run starts from the given checkpoint's tensors (not a fresh init)."""
    train(_cfg(folders, tmp_path / "src", epochs=1), log=lambda *a: None)
    src, _ = load_checkpoint(tmp_path / "src")
    logs = []
    tuned = _cfg(folders, tmp_path / "ft", epochs=1, lr=1e-9, init_weights=str(tmp_path / "src"))
    train(tuned, log=logs.append)
    assert any("initialised from" in ln for ln in logs)
    got, meta = load_checkpoint(tmp_path / "ft" / "last")
    assert meta.training["init_weights"] == str(tmp_path / "src")
    for (k, a), (_, b) in zip(got.state_dict().items(), src.state_dict().items()):
        if a.is_floating_point() and "running" not in k:  # lr 1e-9: the weights are still the source's
            assert torch.allclose(a, b, atol=1e-4), k
    other = _cfg(folders, tmp_path / "bad", model_kwargs={"widths": [8, 16, 32, 128]}, init_weights=str(tmp_path / "src"))
    with pytest.raises(RtsegError, match="do not fit"):
        train(other, log=lambda *a: None)
    runner = CliRunner()
    res = runner.invoke(train_cmd, ["--model", "eunet-s", "--data", folders[0], "--img-size", "64", "--out",
                                    str(tmp_path / "cli"), "--init-weights", str(tmp_path / "nowhere"), "--quiet"])
    assert isinstance(res.exception, RtsegError) and "nowhere does not exist" in str(res.exception)


def test_negative_weight_draws_polyp_free_frames_more_often(tmp_path, folders):
    """--negative-weight: real PolypGen frames with an empty mask are drawn ``w`` times as often."""
    cfg = _cfg(folders, tmp_path, max_images=200, negative_weight=6.0, augment=False)
    fs = _split_data(cfg, tmp_path, False, lambda *a: None)
    _, _, train_ds, _ = _datasets(cfg, fs, [0.5] * 3, [0.25] * 3)
    empty = np.concatenate([~d.masks.reshape(len(d), -1).any(1) for d in train_ds.datasets])
    assert 0 < empty.sum() < len(empty) / 4  # PolypGen's polyp-free frames; Kvasir has none
    _, loader = _loader(cfg, train_ds, torch.Generator().manual_seed(0), 0, 1)
    drawn = np.concatenate([list(loader.sampler) for _ in range(20)])
    share = empty[drawn].mean()
    expected = 6 * empty.sum() / (6 * empty.sum() + (~empty).sum())
    assert abs(share - expected) < 0.05 and share > 2 * empty.mean(), (share, expected, empty.mean())
    with pytest.raises(RtsegError, match="negative_weight"):
        TrainConfig.from_dict({"model": "eunet-s", "data": folders[0], "negative_weight": 0})
