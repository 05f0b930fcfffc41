"""Tests for adnotes.data.download, all offline.

Archives are built in tmp_path and served through file:// URLs or a tiny HTTP server on
127.0.0.1 that can honour Range requests; SOURCES entries are swapped for ones pointing there.
Expected values come from the test's own construction (the bytes it packed, hashlib, numpy).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adnotes.data import download
from adnotes.data.download import Source, convert_visa, extract, get

FAKE_MVTEC = {  # a one-class MVTec tree: relative path -> bytes
    "bottle/train/good/000.png": b"train image",
    "bottle/test/good/000.png": b"good test image",
    "bottle/test/broken_large/000.png": b"bad test image",
    "bottle/ground_truth/broken_large/000_mask.png": b"mask",
    "license.txt": b"CC BY-NC-SA 4.0",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` as relative path -> bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def all_paths(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def make_archive(path: Path, files: dict[str, bytes]) -> Path:
    """Write `files` into a .zip or a .tar[.gz|.xz] (chosen by the name of `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return path
    mode = {".gz": "w:gz", ".xz": "w:xz"}.get(path.suffix, "w")
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def use_source(monkeypatch, name: str, archive: Path, *, url: str | None = None,
               sha: str | None = None, extract_to: str | None = None,
               expect: tuple[str, ...] = ()) -> Source:
    """Point SOURCES[name] at a local archive (file:// unless `url` is given)."""
    real = download.SOURCES[name]
    source = Source(name=name, url=url or archive.as_uri(), filename=real.filename,
                    sha256=sha or sha256(archive), homepage="https://example.org/dataset",
                    licence="test", extract_to=extract_to or real.extract_to, expect=expect)
    monkeypatch.setitem(download.SOURCES, name, source)
    return source


@pytest.fixture
def serve(monkeypatch):
    """start(payload, ranges) -> (url, log): serve bytes over HTTP; stopped after the test."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    servers = []

    def start(payload: bytes, ranges: bool) -> tuple[str, dict]:
        log = {"range": [], "sent": 0}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                asked = self.headers.get("Range")
                log["range"].append(asked)
                first = int(asked[len("bytes="):].split("-")[0]) if ranges and asked else 0
                if first >= len(payload) > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(payload)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if first else 200)
                if first:
                    self.send_header("Content-Range",
                                     f"bytes {first}-{len(payload) - 1}/{len(payload)}")
                self.send_header("Content-Length", str(len(payload) - first))
                self.end_headers()
                self.wfile.write(payload[first:])
                log["sent"] += len(payload) - first

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}/archive", log

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- extraction -----------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.xz", ".zip"])
def test_extract_formats_roundtrip(tmp_path, suffix):
    archive = make_archive(tmp_path / f"fake{suffix}", FAKE_MVTEC)
    out = extract(archive, tmp_path / "root" / "mvtec", expect=("bottle/train/good",))
    assert tree(out) == FAKE_MVTEC
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["mvtec"]  # no temp left


def test_extract_unwraps_top_folder_named_like_dest(tmp_path):
    files = {f"cifar-10-batches-py/data_batch_{i}": bytes([i]) for i in range(1, 3)}
    archive = make_archive(tmp_path / "c.tar.gz", files)
    out = extract(archive, tmp_path / "cifar-10-batches-py")
    assert tree(out) == {"data_batch_1": b"\x01", "data_batch_2": b"\x02"}


def test_extract_layout_mismatch_leaves_nothing(tmp_path):
    archive = make_archive(tmp_path / "a.tar", FAKE_MVTEC)
    (tmp_path / "root").mkdir()
    with pytest.raises(ValueError, match="cable/train/good"):
        extract(archive, tmp_path / "root" / "mvtec", expect=("cable/train/good",))
    assert list((tmp_path / "root").iterdir()) == []


def _tar_with(path: Path, members: list[tuple[str, str, str]]) -> Path:
    """members: (name, kind in file/symlink/hardlink, link target) -> tar archive."""
    with tarfile.open(path, "w") as tf:
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = 4
                tf.addfile(info, io.BytesIO(b"evil"))
                continue
            info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
            info.linkname = link
            tf.addfile(info)
    return path


UNSAFE = {  # case -> (members, name of the member that must be refused)
    "dotdot": ([("ok.txt", "file", ""), ("../evil.txt", "file", "")], "../evil.txt"),
    "absolute": ([("{abs}/evil.txt", "file", "")], "{abs}/evil.txt"),
    "symlink_up": ([("link", "symlink", "../../.."), ("link/evil.txt", "file", "")], "link"),
    "symlink_abs": ([("link", "symlink", "{abs}"), ("link/evil.txt", "file", "")], "link"),
    "hardlink_up": ([("hard", "hardlink", "../outside.txt")], "hard"),
    # each link alone resolves inside ('a/..' reads as '.'), but b really is root's parent:
    # refused at the first link, as every link is
    "symlink_chain": ([("a", "symlink", "."), ("b", "symlink", "a/.."),
                       ("b/evil.txt", "file", "")], "a"),
}


@pytest.mark.parametrize("own_check_only", [False, True], ids=["with_data_filter", "without"])
@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_tar_members_are_refused(tmp_path, monkeypatch, case, own_check_only):
    if own_check_only:  # behave like Python < 3.10.12, which has no tarfile filter
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    (tmp_path / "outside.txt").write_bytes(b"keep")
    members, bad = UNSAFE[case]
    fill = {"abs": str(tmp_path)}
    members = [(n.format(**fill), k, t.format(**fill)) for n, k, t in members]
    archive = _tar_with(tmp_path / "evil.tar", members)
    dest = tmp_path / "a" / "b" / "root" / "data"
    dest.parent.mkdir(parents=True)
    before = all_paths(tmp_path)
    with pytest.raises(ValueError, match="Refusing to extract") as err:
        extract(archive, dest)
    assert repr(bad.format(**fill)) in str(err.value)
    assert all_paths(tmp_path) == before  # nothing written anywhere, no temp folder left
    assert (tmp_path / "outside.txt").read_bytes() == b"keep"


def test_unsafe_zip_member_is_refused(tmp_path):
    archive = make_archive(tmp_path / "evil.zip", {"ok.txt": b"ok", "../evil.txt": b"evil"})
    dest = tmp_path / "a" / "root" / "data"
    dest.parent.mkdir(parents=True)
    before = all_paths(tmp_path)
    with pytest.raises(ValueError, match=r"'\.\./evil\.txt'"):
        extract(archive, dest)
    assert all_paths(tmp_path) == before



def _add(tf: tarfile.TarFile, name: str, kind: str = "file", link: str = "", data: bytes = b"evil") -> None:
    info = tarfile.TarInfo(name)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                 "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE}[kind]
    info.linkname, info.mode = link, 0o755 if kind == "dir" else 0o644
    info.size = len(data) if kind == "file" else 0
    tf.addfile(info, io.BytesIO(data) if kind == "file" else None)


def test_symlink_chain_past_path_max_is_refused(tmp_path):
    """CVE-2025-4517 (CPython's test_realpath_limit_attack, aimed two folders above the target):
    a chain of links whose expansion exceeds PATH_MAX, which realpath (and tarfile's data filter
    up to 3.11.12) silently stops expanding, so the link escape/.. looks inside."""
    dest = tmp_path / "a" / "b" / "root" / "data"
    dest.parent.mkdir(parents=True)
    # extract() unpacks into <dest.parent>/.<dest.name>-XXXXXXXX/new (mkdtemp: 8 random characters)
    unpacked = len(str(dest.parent / f".{dest.name}-12345678" / "new"))
    steps = "abcdefghijklmnop"
    component = "d" * ((os.pathconf(tmp_path, "PC_PATH_MAX") - unpacked - 1) // (len(steps) + 1))
    archive = tmp_path / "chain.tar"
    with tarfile.open(archive, "w") as tf:
        path = ""
        for step in steps:  # a -> d, d/b -> d, ...: the links expand to d/d/.../d
            _add(tf, os.path.join(path, component), "dir")
            _add(tf, os.path.join(path, step), "symlink", component)
            path = os.path.join(path, component)
        long_link = os.path.join(*steps, "l" * 254)  # expands past PATH_MAX: realpath gives up here
        _add(tf, long_link, "symlink", os.path.join(*[".."] * len(steps)))  # -> the unpacked folder
        _add(tf, "escape", "symlink", os.path.join(long_link, *[".."] * 4))  # -> tmp_path / "a"
        _add(tf, "escape/evil.txt")
    before = all_paths(tmp_path)
    with pytest.raises(ValueError, match=r"Refusing to extract .*'a' is a symbolic link"):
        extract(archive, dest)
    assert all_paths(tmp_path) == before and not (tmp_path / "a" / "evil.txt").exists()


def test_link_that_leaves_after_the_top_folder_is_unwrapped_is_refused(tmp_path):
    """data/l -> ../x stays inside while unpacking but points beside the dataset once data/ is
    unwrapped into dest."""
    archive = tmp_path / "wrapped.tar"
    with tarfile.open(archive, "w") as tf:
        _add(tf, "data/ok.txt", data=b"ok")
        _add(tf, "data/l", "symlink", "../x")
    dest = tmp_path / "root" / "data"
    dest.parent.mkdir()
    (dest.parent / "x").write_text("beside the dataset")
    with pytest.raises(ValueError, match=r"member 'data/l' is a symbolic link \(to '\.\./x'\)"):
        extract(archive, dest)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x"]


@pytest.mark.parametrize("kind, what", [("hardlink", "a hard link"), ("fifo", "a device or fifo"),
                                        ("chardev", "a device or fifo")])
def test_hard_links_devices_and_fifos_are_refused(tmp_path, kind, what):
    archive = tmp_path / "odd.tar"
    with tarfile.open(archive, "w") as tf:
        _add(tf, "ok.txt", data=b"ok")
        _add(tf, "odd", kind, "ok.txt" if kind == "hardlink" else "")  # a hard link to a member inside
    dest = tmp_path / "root" / "data"
    dest.parent.mkdir()
    with pytest.raises(ValueError, match=f"member 'odd' is {what}"):
        extract(archive, dest)
    assert list(dest.parent.iterdir()) == []


def test_zip_symlink_entry_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", b"ok")
        info = zipfile.ZipInfo("l")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16  # how zip -y stores a symbolic link
        zf.writestr(info, "../x")
    dest = tmp_path / "root" / "data"
    dest.parent.mkdir()
    with pytest.raises(ValueError, match="member 'l' is a symbolic link"):
        extract(archive, dest)
    assert list(dest.parent.iterdir()) == []

# --- download + hash ------------------------------------------------------------------------

def test_get_downloads_verifies_and_extracts(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "src" / "m.tar.xz", FAKE_MVTEC)
    use_source(monkeypatch, "mvtec", archive, expect=("bottle/train/good",))
    root = tmp_path / "root"
    out = get("mvtec", root)
    assert out == root / "mvtec_anomaly_detection"
    assert tree(out) == FAKE_MVTEC
    stored = root / "downloads" / "mvtec_anomaly_detection.tar.xz"
    assert stored.read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in root.rglob("*") if p.parent in (root, root / "downloads")) == \
        ["downloads", "mvtec_anomaly_detection", "mvtec_anomaly_detection.tar.xz"]


def test_cifar_archive_with_top_folder(tmp_path, monkeypatch):
    files = {f"cifar-10-batches-py/{n}": n.encode() for n in ("data_batch_1", "test_batch")}
    archive = make_archive(tmp_path / "src" / "c.tar.gz", files)
    use_source(monkeypatch, "cifar10", archive, expect=("data_batch_1", "test_batch"))
    out = get("cifar10", tmp_path / "root")
    assert out == tmp_path / "root" / "cifar-10-batches-py"
    assert tree(out) == {"data_batch_1": b"data_batch_1", "test_batch": b"test_batch"}


def test_wrong_hash_after_download_raises(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "src" / "m.tar.xz", FAKE_MVTEC)
    use_source(monkeypatch, "mvtec", archive, sha="0" * 64)
    root = tmp_path / "root"
    with pytest.raises(RuntimeError) as err:
        get("mvtec", root)
    stored = root / "downloads" / "mvtec_anomaly_detection.tar.xz"
    for part in (str(stored), "0" * 64, sha256(archive), "Delete it"):
        assert part in str(err.value)
    assert not (root / "mvtec_anomaly_detection").exists()


def test_existing_archive_is_always_verified(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "src" / "m.tar.xz", FAKE_MVTEC)
    nowhere = (tmp_path / "no-such-file").as_uri()  # any download attempt would fail
    use_source(monkeypatch, "mvtec", archive, url=nowhere)
    stored = tmp_path / "root" / "downloads" / "mvtec_anomaly_detection.tar.xz"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(archive.read_bytes()[:-1] + b"X")  # same size, one byte off
    with pytest.raises(RuntimeError) as err:
        get("mvtec", tmp_path / "root")
    assert str(stored) in str(err.value)
    assert sha256(archive) in str(err.value) and sha256(stored) in str(err.value)

    stored.write_bytes(archive.read_bytes())  # the right file: used without any download
    assert tree(get("mvtec", tmp_path / "root")) == FAKE_MVTEC


def test_unreachable_url_error_says_what_to_do(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "src" / "m.tar.xz", FAKE_MVTEC)
    use_source(monkeypatch, "mvtec", archive, url=(tmp_path / "gone").as_uri())
    with pytest.raises(RuntimeError, match="https://example.org/dataset"):
        get("mvtec", tmp_path / "root")


@pytest.mark.parametrize("ranges, part_kind, expect_resume", [
    (True, "prefix", True),       # server answers 206: only the missing bytes are fetched
    (False, "prefix", False),     # server ignores Range (200): start over
    (True, "too_long", False),    # 416 Range Not Satisfiable: start over
])
def test_partial_download_resumed_or_redone(tmp_path, monkeypatch, serve, ranges, part_kind,
                                            expect_resume):
    archive = make_archive(tmp_path / "src" / "m.tar", {**FAKE_MVTEC, "big.bin": bytes(50_000)})
    payload = archive.read_bytes()
    url, log = serve(payload, ranges)
    source = use_source(monkeypatch, "mvtec", archive, url=url)
    stored = tmp_path / "root" / "downloads" / source.filename
    part = stored.with_name(stored.name + ".part")
    part.parent.mkdir(parents=True)
    partial = payload[:len(payload) // 3] if part_kind == "prefix" else payload + b"extra"
    part.write_bytes(partial)
    out = get("mvtec", tmp_path / "root")
    assert tree(out)["bottle/train/good/000.png"] == b"train image"
    assert stored.read_bytes() == payload and not part.exists()
    assert log["range"][0] == f"bytes={len(partial)}-"
    assert log["sent"] == (len(payload) - len(partial) if expect_resume else len(payload))


def test_resumed_corrupt_part_is_caught_by_the_hash(tmp_path, monkeypatch, serve):
    archive = make_archive(tmp_path / "src" / "m.tar", {"big.bin": bytes(range(256)) * 100})
    payload = archive.read_bytes()
    url, _ = serve(payload, ranges=True)
    source = use_source(monkeypatch, "mvtec", archive, url=url)
    part = tmp_path / "root" / "downloads" / (source.filename + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * 1000)  # right length for a prefix, wrong bytes
    with pytest.raises(RuntimeError, match="expected sha256"):
        get("mvtec", tmp_path / "root")


# --- existing folders -----------------------------------------------------------------------

def test_existing_dataset_folder_is_kept(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "src" / "m.tar.xz", FAKE_MVTEC)
    use_source(monkeypatch, "mvtec", archive, url=(tmp_path / "gone").as_uri(),
               expect=("bottle/train/good",))
    folder = tmp_path / "root" / "mvtec_anomaly_detection"
    (folder / "bottle" / "train" / "good").mkdir(parents=True)
    (folder / "mine.txt").write_text("user data")
    assert get("mvtec", tmp_path / "root") == folder  # complete: returned, nothing downloaded
    assert (folder / "mine.txt").read_text() == "user data"


def test_incomplete_folder_needs_force(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "src" / "m.tar.xz", FAKE_MVTEC)
    use_source(monkeypatch, "mvtec", archive, expect=("bottle/train/good",))
    folder = tmp_path / "root" / "mvtec_anomaly_detection"
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="force"):
        get("mvtec", tmp_path / "root")
    assert tree(folder) == {"mine.txt": b"user data"}
    assert tree(get("mvtec", tmp_path / "root", force=True)) == FAKE_MVTEC


def test_unknown_name():
    with pytest.raises(ValueError, match="cifar10"):
        get("imagenet", "/nonexistent")


def test_real_sources_are_well_formed():
    assert set(download.SOURCES) == {"mvtec", "visa", "cifar10"}
    for name, s in download.SOURCES.items():
        assert s.name == name and s.url.startswith("https://") and s.url.endswith(s.filename)
        assert len(s.sha256) == 64 and set(s.sha256) <= set("0123456789abcdef")


# --- VisA -----------------------------------------------------------------------------------

def make_fake_visa(root: Path) -> list[dict[str, str]]:
    """2 classes x (3 train normal, 2 test normal, 2 test anomaly) 8x8 images + 1cls.csv."""
    rng = np.random.default_rng(0)
    rows = []
    for cls in ("candle", "pcb1"):
        data = root / cls / "Data"
        plan = [("train", "normal")] * 3 + [("test", "normal")] * 2 + [("test", "anomaly")] * 2
        for i, (split, label) in enumerate(plan):
            kind = "Normal" if label == "normal" else "Anomaly"
            image = data / "Images" / kind / f"{i:03d}.JPG"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(image, "JPEG")
            mask = ""
            if label == "anomaly":
                ids = np.zeros((8, 8), np.uint8)
                ids[1:3, 1:4], ids[5:7, 4:7] = 1, 2  # two defect regions, ids 1 and 2
                path = data / "Masks" / "Anomaly" / f"{i:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(ids).save(path)
                mask = path.relative_to(root).as_posix()
            rows.append({"object": cls, "split": split, "label": label,
                         "image": image.relative_to(root).as_posix(), "mask": mask})
    (root / "split_csv").mkdir(parents=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["object", "split", "label", "image", "mask"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def check_converted(out: Path, visa: Path, rows: list[dict[str, str]]) -> None:
    expected = {}
    for r in rows:
        name = Path(r["image"]).name
        kind = "good" if r["label"] == "normal" else "bad"
        expected[f"{r['object']}/{r['split']}/{kind}/{name}"] = (visa / r["image"]).read_bytes()
    masks = {p: b for p, b in tree(out).items() if "/ground_truth/" in p}
    assert {p: b for p, b in tree(out).items() if p not in masks} == expected  # exact copies
    assert sorted(masks) == ["candle/ground_truth/bad/005_mask.png",
                             "candle/ground_truth/bad/006_mask.png",
                             "pcb1/ground_truth/bad/005_mask.png",
                             "pcb1/ground_truth/bad/006_mask.png"]
    for r in (r for r in rows if r["mask"]):
        ids = np.asarray(Image.open(visa / r["mask"]))
        got = np.asarray(Image.open(out / r["object"] / "ground_truth" / "bad"
                                    / f"{Path(r['image']).stem}_mask.png"))
        assert got.dtype == np.uint8 and set(np.unique(got)) == {0, 255}
        np.testing.assert_array_equal(got, (ids > 0) * 255)


def test_convert_visa(tmp_path):
    visa = tmp_path / "VisA"
    rows = make_fake_visa(visa)
    out = convert_visa(visa, tmp_path / "visa_pytorch")
    check_converted(out, visa, rows)
    for cls in ("candle", "pcb1"):  # 3 train / 2 good / 2 bad per class
        assert [len(list((out / cls / d).iterdir())) for d in
                ("train/good", "test/good", "test/bad", "ground_truth/bad")] == [3, 2, 2, 2]
    with pytest.raises(FileExistsError):
        convert_visa(visa, out)


def test_convert_visa_without_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="1cls.csv"):
        convert_visa(tmp_path, tmp_path / "out")


def test_get_visa_end_to_end(tmp_path, monkeypatch):
    visa = tmp_path / "raw"
    rows = make_fake_visa(visa)
    archive = make_archive(tmp_path / "src" / "VisA.tar", tree(visa))  # no top-level folder
    use_source(monkeypatch, "visa", archive, expect=("split_csv/1cls.csv",))
    root = tmp_path / "root"
    out = get("visa", root)
    assert out == root / "visa_pytorch"
    assert tree(root / "VisA") == tree(visa)
    check_converted(out, visa, rows)
    (out / "mine.txt").write_text("kept")
    assert get("visa", root) == out and (out / "mine.txt").exists()  # not redone
