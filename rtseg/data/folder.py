"""Image/mask folder datasets (Kvasir-SEG, CVC-ClinicDB, PolypGen layouts) and the deterministic split.

Layout: ``ROOT/images/<stem>.<ext>`` pairs with ``ROOT/masks/<stem>[_mask].<ext>`` by file stem.
Binary masks (JPEG in the polyp sets) are read as gray and thresholded at ``> 127``; class-index
masks (CamVid PNGs) are read as they are. Images and masks alike are turned upright by their EXIF
orientation (:func:`imread`: one rule for every reader), and only regular files are read (a FIFO or
device among them is refused at once instead of blocking the reader forever).

The split is 80/10/10 train/val/test by frame count, decided by sorting *groups* by the SHA-256 of
their name — the same on every machine and Python version, independent of file-system order — and
recorded in the run folder (``split.json``). A group is what must never straddle two parts: the frames
of one video or sequence (near-duplicates). Groups come from a table in the folder (``sequences.csv`` /
``groups.csv``: ``stem,<video|sequence|group>``, e.g. CVC-ClinicDB's 29 videos) or from the stem
(:data:`GROUP_PATTERNS`: PolypGen's ``seqN_…`` and ``N_endocv2021_positive_…`` sequence frames); any other
stem is a group of its own, which makes the rule the plain per-stem hash split (Kvasir-SEG).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import RtsegError
from ..safe_io import check_regular

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = ("_mask", "_Mask", "-mask", "_seg", "_label")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``stem`` (pairing key), ``image`` path and ``mask`` path.

    ``mask`` may be ``None`` for formats whose labels are not mask files (COCO polygons, Supervisely
    bitmaps); ``ann`` then holds what the format's reader needs (hashable).
    """

    stem: str
    image: Path
    mask: Path | None
    ann: object = None


def _list_images(folder: Path) -> list[Path]:
    """The image files of ``folder`` (by extension, hidden ones left out), sorted.

    Raises:
        RtsegError: one of them is not a regular file (:func:`check_regular`).
    """
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
    for p in files:
        check_regular(p)
    return files


def _mask_stem(stem: str) -> str:
    for s in MASK_SUFFIXES:
        if stem.endswith(s):
            return stem[: -len(s)]
    return stem


def find_pairs(root: str | Path) -> list[Sample]:
    """Pair ``root/images/*`` with ``root/masks/*`` by file stem (``_mask`` suffixes allowed).

    Returns samples sorted by stem.

    Raises:
        RtsegError: missing folders, no images, or unpaired files (the message lists them).
    """
    root = Path(root)
    if not root.is_dir():
        raise RtsegError(f"dataset folder {root} does not exist; pass a folder holding images/ and masks/")
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir():
        raise RtsegError(f"{root} has no images/ folder; the expected layout is {root}/images/X.jpg with {root}/masks/X.jpg")
    if not mask_dir.is_dir():
        raise RtsegError(f"{root} has no masks/ folder; add the label masks as {root}/masks/<same name as the image> "
                         f"(or use an unlabelled image folder only where no labels are needed)")
    if not _list_images(img_dir):
        raise RtsegError(f"{img_dir} holds no images ({', '.join(IMAGE_EXTS)}); check the path")
    return pair_folder(img_dir, mask_dir)


def _listing(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


def pair_folder(img_dir: Path, mask_dir: Path, prefix: str = "") -> list[Sample]:
    """Pair ``img_dir/X.*`` with ``mask_dir/X[_mask].*`` by stem; stems get ``prefix``.

    Raises:
        RtsegError: unpaired files (the message lists them).
    """
    images = {p.stem: p for p in _list_images(img_dir)}
    masks = {_mask_stem(p.stem): p for p in _list_images(mask_dir)}
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} image(s) without a mask: {_listing(no_mask)}")
        if no_image:
            parts.append(f"{len(no_image)} mask(s) without an image: {_listing(no_image)}")
        raise RtsegError(f"unpaired files in {img_dir} / {mask_dir}: {'; '.join(parts)} — "
                         f"every image X.* needs a mask X.* (or X_mask.*); remove or add the missing files")
    return [Sample(prefix + s, images[s], masks[s]) for s in sorted(images)]


def stem_key(stem: str) -> str:
    """Stable sort key of a stem for the split: SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(stem.encode("utf-8")).hexdigest()


#: stem patterns that name a sequence (first match wins; the group is the pattern's ``group`` template
#: filled with the match): PolypGen's polyp-free sequences (``seq10_img3`` → ``seq10``), its positive/negative
#: sequence frames (``14_endocv2021_positive_512`` → ``seq14``) and its numbered OLCV1 frame runs
#: (``176OLCV1_100H0006`` → ``OLCV1_176``). Single frames (``C3_EndoCV2021_00123``) match none.
GROUP_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"^(?:.*__)?(seq\d+)_"), r"\1"),
    (re.compile(r"^(?:.*__)?(\d+)_endocv2021_(?:positive|negative)_\d+$", re.IGNORECASE), r"seq\1"),
    (re.compile(r"^(?:.*__)?(\d+)OLCV1_100[HS]\d*$"), r"OLCV1_\1"),
)
#: group tables read from a data folder (first found): header ``stem`` + one of :data:`GROUP_COLUMNS`
GROUP_TABLES = ("groups.csv", "sequences.csv")
GROUP_COLUMNS = ("group", "video", "sequence")
GROUPED_RULE = ("group frames by video/sequence (groups.csv/sequences.csv in the folder, else seqN_ / "
                "N_endocv2021_ / NOLCV1_ stem prefixes; other stems alone); sort groups by sha256(group); "
                "80/10/10 by frame count")


def _read_group_table(root: Path) -> dict[str, str]:
    """``stem -> group`` from the first :data:`GROUP_TABLES` file in ``root`` (empty if none).

    Raises:
        RtsegError: a table without a ``stem`` column and a group column, or a row without a group.
    """
    for name in GROUP_TABLES:
        path = root / name
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        cols = rows[0].keys() if rows else ()
        col = next((c for c in GROUP_COLUMNS if c in cols), None)
        if "stem" not in cols or col is None:
            raise RtsegError(f"{path} needs a header 'stem,<{'|'.join(GROUP_COLUMNS)}>'; fix its first line")
        bad = [r["stem"] for r in rows if not (r.get(col) or "").strip()]
        if bad:
            raise RtsegError(f"{path}: {len(bad)} row(s) without a {col}: {_listing(bad)}; fill them in or remove them")
        return {r["stem"].strip(): f"{col}{r[col].strip()}" for r in rows}
    return {}


def group_of(stem: str, table: dict[str, str] | None = None) -> str:
    """The group (video / sequence) of a sample stem: ``table`` first, then :data:`GROUP_PATTERNS`, else the stem."""
    if table and stem in table:
        return table[stem]
    for pattern, template in GROUP_PATTERNS:
        m = pattern.match(stem)
        if m:
            return m.expand(template)
    return stem


def sample_groups(samples: list[Sample], root: str | Path | None = None) -> dict[str, str]:
    """``stem -> group`` for every sample (:func:`group_of` with the folder's group table, if ``root`` has one)."""
    table = _read_group_table(Path(root)) if root is not None else {}
    return {s.stem: group_of(s.stem, table) for s in samples}


def split_samples(samples: list[Sample], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  groups: dict[str, str] | None = None) -> dict[str, list[Sample]]:
    """Deterministic train/val/test split that keeps every group in one part.

    Groups (``stem -> group``; default: every stem alone) are sorted by the SHA-256 of their name and
    dealt in that order: to ``train`` until it holds ``round(n·f_train)`` frames, then to ``val`` until
    train + val hold ``round(n·f_train) + round(n·f_val)``, the rest to ``test``; a part whose target is
    above zero gets at least one group. With singleton groups this is exactly the per-stem hash split.
    Parts are sorted by stem. Same result on every machine.

    Raises:
        RtsegError: fractions that do not sum to 1.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise RtsegError(f"split fractions must sum to 1; got {fractions}")
    groups = groups or {}
    members: dict[str, list[Sample]] = {}
    for s in samples:
        members.setdefault(groups.get(s.stem, s.stem), []).append(s)
    n = len(samples)
    n_train = int(round(n * fractions[0]))
    bounds = (n_train, n_train + int(round(n * fractions[1])))
    parts: list[list[Sample]] = [[], [], []]
    p, cum = 0, 0
    for g in sorted(members, key=stem_key):
        while p < 2 and cum >= bounds[p] and (parts[p] or bounds[p] == (bounds[p - 1] if p else 0)):
            p += 1
        parts[p] += members[g]
        cum += len(members[g])
    return {k: sorted(v, key=lambda s: s.stem) for k, v in zip(SPLITS, parts)}


def grouped_split(samples: list[Sample], root: str | Path | None = None) -> dict[str, list[Sample]]:
    """:func:`split_samples` 80/10/10 with the groups of :func:`sample_groups` (the polyp-folder rule)."""
    return split_samples(samples, groups=sample_groups(samples, root))


def load_split(root: str | Path, split: str | None) -> list[Sample]:
    """Samples of ``root`` for ``split`` (``train``/``val``/``test``, grouped rule) or all of them (``None``/``all``)."""
    samples = find_pairs(root)
    if split in (None, "all"):
        return samples
    if split not in SPLITS:
        raise RtsegError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} or all")
    return grouped_split(samples, root)[split]


def split_record(root: str | Path, parts: dict[str, list[Sample]], rule: str) -> dict:
    """The JSON record of one folder's split: root, rule, stems per part and, where frames were grouped,
    ``groups`` (``group -> part`` for every group of more than one frame)."""
    rec = {"root": str(Path(root).resolve()), "rule": rule, **{k: [s.stem for s in v] for k, v in parts.items()}}
    table = _read_group_table(Path(root)) if Path(root).is_dir() else {}
    grouped: dict[str, tuple[str, int]] = {}
    for part, samples in parts.items():
        for s in samples:
            g = group_of(s.stem, table)
            grouped[g] = (part, grouped.get(g, (part, 0))[1] + 1)
    multi = {g: part for g, (part, k) in sorted(grouped.items()) if k > 1}
    return rec | ({"groups": multi} if multi else {})


def write_split(path: str | Path, root: str | Path, parts: dict[str, list[Sample]],
                rule: str = GROUPED_RULE) -> None:
    """Record the split (:func:`split_record`) as JSON."""
    from ..safe_io import write_json

    write_json(path, split_record(root, parts, rule))


def fingerprint(samples: list[Sample]) -> str:
    """SHA-256 over the sorted stems and file sizes: identifies the data a model was trained on."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.stem):
        msize = s.mask.stat().st_size if s.mask is not None else 0
        h.update(f"{s.stem}:{s.image.stat().st_size}:{msize}\n".encode())
    return h.hexdigest()


#: EXIF orientation tag (1..8) → the NumPy view that turns the stored pixels upright (as PIL's
#: ``ImageOps.exif_transpose``): mirror, rotate 180, flip, transpose, rotate 90 CW, transverse, rotate 90 CCW
_ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1),
           6: lambda a: np.rot90(a, -1), 7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation (1..8, 1 = upright) of an image file, read from its header by PIL (JPEG,
    PNG ``eXIf``, TIFF, WebP); 1 when it has none or the header is unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format == "PNG":  # PIL's getexif() would decode the whole PNG to look past its pixels
                exif = Image.Exif()
                exif.load(im.info.get("exif") or b"")
            else:
                exif = im.getexif()
            o = exif.get(0x0112, 1)
    except Exception:  # PIL raises many types on odd headers; cv2 reports an unreadable file
        return 1
    return o if isinstance(o, int) and 1 <= o <= 8 else 1


def imread(path: str | Path, flags: int) -> np.ndarray | None:
    """``cv2.imread`` of a regular file turned upright by its EXIF orientation, the same way for every
    ``flags`` (OpenCV applies it for ``IMREAD_COLOR`` and ``IMREAD_GRAYSCALE`` only, not for masks read
    ``IMREAD_UNCHANGED``). ``None`` when OpenCV cannot read the file.

    Raises:
        RtsegError: ``path`` is a FIFO, socket, device or folder (:func:`check_regular`).
    """
    check_regular(path)
    if flags != cv2.IMREAD_UNCHANGED:
        flags |= cv2.IMREAD_IGNORE_ORIENTATION
    img = cv2.imread(str(path), flags)
    if img is None:
        return None
    turn = _ORIENT.get(exif_orientation(path))
    return np.ascontiguousarray(turn(img)) if turn else img


def image_size(path: str | Path) -> tuple[int, int] | None:
    """``(w, h)`` of an image file as :func:`read_image` gives it (EXIF orientation applied), from its
    header; ``None`` when the header is unreadable.

    Raises:
        RtsegError: ``path`` is not a regular file (:func:`check_regular`).
    """
    from PIL import Image

    check_regular(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:  # unreadable header: the reader names the file when it gets there
        return None
    return (h, w) if exif_orientation(path) in (5, 6, 7, 8) else (w, h)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as ``uint8[H, W, 3]`` RGB, upright (EXIF orientation applied, :func:`imread`).

    Raises:
        RtsegError: missing or unreadable file, or not a regular file.
    """
    img = imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise RtsegError(f"cannot read image {path}; check that it exists and is a valid image file")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def binary_mask(m: np.ndarray, threshold: int | None = None) -> np.ndarray:
    """A stored binary mask (gray or colour, 8 or 16 bit) → ``uint8[H, W]`` in {0, 1}.

    The one rule for every reader (image and video evaluation, training): masks whose largest value is
    1 are 0/1 masks (foreground = 1); others are 0/255 (8 bit) or 0/65535 (16 bit) masks, foreground
    above half the range — ``> 127`` for 8-bit JPEG masks (``threshold`` overrides it, in 8-bit units).
    """
    if m.ndim == 3:  # gray as OpenCV converts it (what IMREAD_GRAYSCALE gives)
        m = cv2.cvtColor(np.ascontiguousarray(m[..., :3]), cv2.COLOR_BGR2GRAY) if m.shape[-1] >= 3 else m[..., 0]
    peak = int(m.max(initial=0))
    if peak <= 1:
        return (m > 0).astype(np.uint8)
    scale = 257 if m.dtype == np.uint16 else 1
    t = (127 if threshold is None else threshold) * scale
    return (m > t).astype(np.uint8)


def read_mask(path: str | Path, binary: bool = True, threshold: int | None = None) -> np.ndarray:
    """Read a mask as ``uint8[H, W]``, upright like its image (EXIF orientation applied, :func:`imread`):
    binary → {0, 1} by :func:`binary_mask` (0/1 or 0/255 masks, 8 or 16 bit, PNG or JPEG); else class
    indices as stored (first channel).

    Raises:
        RtsegError: missing or unreadable file, not a regular file, or class indices above 255.
    """
    m = imread(path, cv2.IMREAD_UNCHANGED)
    if m is None:
        raise RtsegError(f"cannot read mask {path}; check that it exists and is a valid image file")
    if binary:
        return binary_mask(m, threshold)
    if m.ndim == 3:
        m = m[..., 0]
    if m.dtype != np.uint8 and int(m.max(initial=0)) > 255:
        raise RtsegError(f"mask {path} has class indices above 255; store them as an 8-bit PNG")
    return m.astype(np.uint8)


def read_sample(s: Sample, binary: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8[H, W, 3] RGB, uint8[H, W] mask)``; raises :class:`RtsegError` if sizes differ."""
    img, mask = read_image(s.image), read_mask(s.mask, binary)
    if img.shape[:2] != mask.shape[:2]:
        raise RtsegError(f"image {s.image.name} is {img.shape[1]}x{img.shape[0]} but its mask is {mask.shape[1]}x{mask.shape[0]}; fix or remove the pair")
    return img, mask


def list_images(path: str | Path) -> list[Path]:
    """Images of a folder (or of its ``images/`` sub-folder), sorted; for unlabelled sets (calibration).

    Raises:
        RtsegError: no such folder, or no images in it.
    """
    p = Path(path)
    if not p.exists():
        raise RtsegError(f"image folder {p} does not exist; check the path")
    if p.is_file():
        return [p]
    folder = p / "images" if (p / "images").is_dir() else p
    files = _list_images(folder)
    if not files:
        raise RtsegError(f"{folder} holds no images ({', '.join(IMAGE_EXTS)}); check the path")
    return files


def load_split_file(path: str | Path) -> dict:
    """Read a ``split.json`` written by :func:`write_split`."""
    return json.loads(Path(path).read_text())
