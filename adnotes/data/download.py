"""Download, verify and unpack the public benchmarks: MVTec AD, VisA and CIFAR-10.

`get(name, root)` is what `python -m adnotes data get NAME --root DIR` runs. It returns the folder
the loaders in `adnotes.data.datasets` read:

    mvtec   -> <root>/mvtec_anomaly_detection   MVTec layout, as shipped
    visa    -> <root>/visa_pytorch              VisA's official "1cls" split in the MVTec layout
                                                (the raw archive is unpacked to <root>/VisA)
    cifar10 -> <root>/cifar-10-batches-py       the python pickles, as shipped

Conventions:
- Archives live in <root>/downloads/. A download streams into `<file>.part`, is resumed with an
  HTTP Range request when the server answers 206 Partial Content (otherwise it starts over), and
  is renamed to its final name only once complete.
- The sha256 of an archive is checked every time it is used, also when it was already on disk.
  A mismatch is an error that names the file, both hashes and what to do; it is never "repaired".
- Extraction admits regular files and folders only: a link of any kind (the datasets hold none),
  a device or a fifo is refused, and so is a member that would land outside the target folder
  (absolute path, `..`). With no links on disk a path cannot be redirected, so the link-chain
  escapes of tarfile's own filter (CVE-2025-4517) cannot happen. Everything unpacks into a
  temporary folder inside <root> that is checked again and moved into place at the end, so a
  failure leaves nothing half-written. A non-empty dataset folder is never replaced unless
  force=True.
"""
from __future__ import annotations

import csv
import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .datasets import MVTEC_CLASSES, VISA_CLASSES

VISA_SPLIT_DIR = "visa_pytorch"  # the name spot-diff's prepare_data.py (and anomalib) use
CHUNK = 1 << 20                  # bytes per read while downloading / hashing


@dataclass(frozen=True)
class Source:
    """Where a dataset archive comes from, and the folder under <root> it is unpacked into."""

    name: str
    url: str
    filename: str
    sha256: str
    homepage: str
    licence: str
    extract_to: str
    notes: str = ""
    expect: tuple[str, ...] = ()  # paths inside extract_to that a complete extraction has


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source(
        name="mvtec",
        # MVTec rotates this share link (the 2021 one answers 404); anomalib's MVTecAD tracks it.
        url="https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/"
            "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz",
        filename="mvtec_anomaly_detection.tar.xz",
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad",
        licence="CC BY-NC-SA 4.0",
        extract_to="mvtec_anomaly_detection",
        notes="4.9 GiB; the archive holds the 15 class folders at its top level. If the link has "
              "moved, download the archive from the homepage into <root>/downloads/.",
        expect=tuple(f"{c}/train/good" for c in MVTEC_CLASSES),
    ),
    Source(
        name="visa",
        url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        filename="VisA_20220922.tar",
        sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        homepage="https://github.com/amazon-science/spot-diff",
        licence="CC BY 4.0",
        extract_to="VisA",
        notes="1.8 GiB; get() converts it to the MVTec layout in <root>/visa_pytorch "
              "following split_csv/1cls.csv.",
        expect=("split_csv/1cls.csv", *(f"{c}/Data/Images/Normal" for c in VISA_CLASSES)),
    ),
    Source(
        name="cifar10",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        filename="cifar-10-python.tar.gz",
        sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        licence="no licence stated; cite Krizhevsky (2009)",
        extract_to="cifar-10-batches-py",
        notes="163 MiB; md5 c58f30108f718f92721af3b95e74349a (the value torchvision checks).",
        expect=(*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
    ),
)}


def get(name: str, root: str | Path, *, force: bool = False) -> Path:
    """Download (if needed), verify and unpack dataset `name`; return the folder loaders read.

    An existing complete folder is returned as is; force=True unpacks (and converts) it again
    from the verified archive.
    """
    if name not in SOURCES:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(SOURCES)}.")
    source, root = SOURCES[name], Path(root).expanduser()
    if name == "visa" and not force and _nonempty(root / VISA_SPLIT_DIR):
        return root / VISA_SPLIT_DIR  # convert_visa writes it all or nothing
    folder = root / source.extract_to
    if force or not _complete(folder, source.expect):
        extract(fetch(source, root), folder, expect=source.expect, force=force)
    if name == "visa":
        return convert_visa(folder, root / VISA_SPLIT_DIR, force=force)
    return folder


def fetch(source: Source, root: str | Path) -> Path:
    """Return <root>/downloads/<filename>, downloading it first if absent; always sha256-checked."""
    path = Path(root).expanduser() / "downloads" / source.filename
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        try:
            _download(source.url, part, desc=source.filename)
        except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
            raise RuntimeError(
                f"Downloading {source.name} from {source.url} failed: {err}\n"
                f"Run again to resume ({part} keeps what arrived), or download {source.filename} "
                f"yourself from {source.homepage} and place it at {path}.") from err
        part.rename(path)
    actual = sha256sum(path)
    if actual != source.sha256:
        raise RuntimeError(
            f"{path} is not the expected {source.name} archive:\n"
            f"  expected sha256 {source.sha256}\n  actual   sha256 {actual}\n"
            f"Delete it and run again, or download {source.filename} yourself from "
            f"{source.homepage} and place it at {path}.")
    return path


def _download(url: str, part: Path, desc: str) -> None:
    """Stream `url` into `part`, continuing the bytes already there if the server allows it."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "adnotes (python urllib)"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not have:
            raise
        part.unlink()  # 416 Range Not Satisfiable: the partial file is useless, start over
        return _download(url, part, desc)
    with response:
        resumed = (have > 0 and response.status == 206 and
                   response.headers.get("Content-Range", "").startswith(f"bytes {have}-"))
        start = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length else None
        with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc) as bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")


def sha256sum(path: str | Path) -> str:
    """Hex sha256 of a file (with a progress bar: the archives are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=os.path.getsize(path), unit="B", unit_scale=True,
                                     unit_divisor=1024, desc=f"sha256 {Path(path).name}",
                                     leave=False) as bar:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def extract(archive: str | Path, dest: str | Path, *, expect: Sequence[str] = (),
            force: bool = False) -> Path:
    """Safely unpack a .tar / .tar.gz / .tar.xz / .zip into `dest`, all or nothing.

    A single top-level folder named like `dest` is unwrapped (cifar-10-python.tar.gz holds
    cifar-10-batches-py/). `expect` lists paths that must exist in the result.
    """
    archive, dest = Path(archive), Path(dest)
    if _nonempty(dest) and not force:
        raise FileExistsError(f"{dest} already exists and is not empty; delete it, or pass "
                              "force=True (CLI: --force) to replace it.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        content = tmp / "new"
        _unpack(archive, content)
        entries = list(content.iterdir())
        if len(entries) == 1 and entries[0].name == dest.name and entries[0].is_dir():
            content = entries[0]
        _check_tree(content, archive)  # the final paths, after the unwrap
        missing = [p for p in expect if not (content / p).exists()]
        if missing:
            raise ValueError(f"{archive} does not have the expected layout: {missing[0]!r} "
                             f"and {len(missing) - 1} more paths are missing; nothing was written.")
        _replace(content, dest, trash=tmp / "old")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _unpack(archive: Path, dest: Path) -> None:
    """Extract member by member; each is checked (see _check_member) before it is written."""
    dest.mkdir()
    root = os.path.realpath(dest)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in tqdm(zf.infolist(), desc=f"extract {archive.name}", unit="file"):
                kind = stat.S_IFMT(info.external_attr >> 16)  # Unix mode; 0 when made elsewhere
                _check_member(archive, info.filename, root, kind in (0, stat.S_IFREG, stat.S_IFDIR),
                              "a symbolic link" if kind == stat.S_IFLNK else "not a file or folder")
                zf.extract(info, dest)
        return
    # Python >= 3.12 (and 3.10.12+/3.11.4+) also ship tarfile's own "data" filter: use it too.
    data_filter = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(archive, "r:*") as tf:
        for member in tqdm(tf, desc=f"extract {archive.name}", unit="file"):  # one streaming pass
            what = (f"a symbolic link (to {member.linkname!r})" if member.issym() else
                    f"a hard link (to {member.linkname!r})" if member.islnk() else "a device or fifo")
            _check_member(archive, member.name, root, member.isfile() or member.isdir(), what)
            tf.extract(member, dest, **data_filter)


def _check_member(archive: Path, name: str, root: str, plain: bool, what: str) -> None:
    """Refuse a member that is not a regular file or folder, or whose path leaves root. Nothing
    before it created a link, so the path is read as written: no link can redirect it."""
    if not plain:
        raise ValueError(f"Refusing to extract {archive}: member {name!r} is {what}; the datasets "
                         "hold only files and folders. The archive is corrupt or malicious; delete "
                         "it and download it again.")
    path = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or os.path.commonpath([root, path]) != root:
        raise ValueError(f"Refusing to extract {archive}: member {name!r} points outside the "
                         "target folder (absolute path or '..'). The archive is corrupt or "
                         "malicious; delete it and download it again.")


def _check_tree(folder: Path, archive: Path) -> None:
    """Every path under the unpacked folder is a regular file or folder inside it (links never)."""
    root = os.path.realpath(folder)
    for parent, dirs, files in os.walk(folder):  # does not follow links
        for name in dirs + files:
            path = os.path.join(parent, name)
            mode = os.lstat(path).st_mode
            inside = os.path.commonpath([root, os.path.realpath(path)]) == root
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or not inside:
                raise ValueError(f"Refusing to extract {archive}: {os.path.relpath(path, folder)!r} "
                                 "is not a plain file or folder inside the target after unpacking; "
                                 "nothing was written. Delete the archive and download it again.")


def convert_visa(visa_root: str | Path, out_root: str | Path, *, force: bool = False) -> Path:
    """Write VisA's official one-class split (split_csv/1cls.csv) in the MVTec layout.

    <cls>/train/good, <cls>/test/good, <cls>/test/bad get copies of the JPGs (names kept);
    <cls>/ground_truth/bad/<stem>_mask.png is the mask binarised to 0/255 (VisA masks hold region
    ids, >0 = defect). Same split and layout as spot-diff's `prepare_data.py --split-type 1cls`.
    """
    visa_root, out_root = Path(visa_root), Path(out_root)
    split_csv = visa_root / "split_csv" / "1cls.csv"
    if not split_csv.is_file():
        raise FileNotFoundError(
            f"{split_csv} not found. Expected the unpacked {SOURCES['visa'].filename}: "
            "<visa_root>/<class>/Data/{Images,Masks}/... and <visa_root>/split_csv/1cls.csv; "
            "get it with `python -m adnotes data get visa --root DIR`.")
    if _nonempty(out_root) and not force:
        raise FileExistsError(f"{out_root} already exists and is not empty; delete it, or pass "
                              "force=True (CLI: --force) to replace it.")
    with open(split_csv, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    columns = {"object", "split", "label", "image", "mask"}
    if not rows or not columns <= set(reader.fieldnames or ()):
        raise ValueError(f"{split_csv} must have rows and the columns {sorted(columns)}.")
    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_root.name}-", dir=out_root.parent))
    try:
        for row in tqdm(rows, desc="VisA -> MVTec layout", unit="image"):
            _convert_row(row, visa_root, tmp / "new")
        _replace(tmp / "new", out_root, trash=tmp / "old")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_root


def _convert_row(row: dict[str, str], visa_root: Path, out: Path) -> None:
    kind = {"normal": "good", "anomaly": "bad"}.get(row["label"])
    if kind is None or row["split"] not in ("train", "test") or (
            kind == "bad" and (row["split"] == "train" or not row["mask"])):
        raise ValueError(f"Unexpected row in 1cls.csv: {row}. Expected split train/test, label "
                         "normal/anomaly, anomalies only in test and always with a mask.")
    image = visa_root / row["image"]
    copy = out / row["object"] / row["split"] / kind / image.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image, copy)
    if kind == "bad":
        mask = np.asarray(Image.open(visa_root / row["mask"]))  # (H, W) region ids or (H, W, C)
        if mask.ndim == 3:
            mask = mask.max(axis=-1)
        width, height = Image.open(image).size
        if mask.shape != (height, width):
            raise ValueError(f"Mask {row['mask']} is {mask.shape[1]}x{mask.shape[0]} but image "
                             f"{row['image']} is {width}x{height}; the VisA tree is damaged.")
        gt = out / row["object"] / "ground_truth" / "bad" / f"{image.stem}_mask.png"
        gt.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8)).save(gt)  # (H, W) 0/255


def _replace(new: Path, dest: Path, trash: Path) -> None:
    """Move `new` to `dest`; an existing `dest` goes to `trash` first (the caller deletes it)."""
    if dest.exists():
        dest.rename(trash)
    new.rename(dest)


def _nonempty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _complete(folder: Path, expect: Sequence[str]) -> bool:
    """False if `folder` is absent or empty, True if it has all `expect` paths, else raise."""
    if not _nonempty(folder):
        return False
    missing = [p for p in expect if not (folder / p).exists()]
    if missing:
        raise FileExistsError(f"{folder} exists but is incomplete ({missing[0]!r} and "
                              f"{len(missing) - 1} more expected paths are missing); delete it, "
                              "or pass force=True (CLI: --force) to replace it.")
    return True
