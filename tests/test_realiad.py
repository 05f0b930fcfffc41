"""Real-IAD loader on a tiny tree in the official layout (realiad_1024/ + realiad_jsons/), built here."""
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from adnotes.data import ADDataset, load_dataset
from adnotes.data.realiad import realiad_records, record_view, sample_key, sample_scores

VIEWS = ("C1", "C2", "C3", "C4", "C5")
SIZE = 32


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _mask(view):
    """A defect square whose place depends on the view, so a mix-up of masks shows."""
    m = np.zeros((SIZE, SIZE), np.uint8)
    k = int(view[1])
    m[2 * k:2 * k + 6, 20:26] = 255
    return m


def make_realiad(root, classes=("audiojack", "toy_brick"), protocol="realiad_jsons"):
    """Per class: 2 normal training objects, 1 normal test object and two defective test objects
    (code QS visible in C1 and C3; code HS visible in C2 only), 5 views each, 32×32 PNGs.
    Returns the expected test table (one row per view) as a DataFrame."""
    rng = np.random.default_rng(0)
    expected = []
    for cls in classes:
        info = {"meta": {"prefix": cls, "normal_class": "OK", "note": "tiny fixture"}, "train": [], "test": []}
        objects = [("train", 1, "OK", ()), ("train", 2, "OK", ()), ("test", 3, "OK", ()),
                   ("test", 4, "QS", ("C1", "C3")), ("test", 5, "HS", ("C2",))]
        for split, n, code, visible in objects:
            state = "OK" if code == "OK" else f"NG_{code}"
            folder = f"OK/S{n:04d}" if code == "OK" else f"NG/{code}/S{n:04d}"
            for view in VIEWS:
                name = f"{cls}_{n:04d}_{state}_{view}_20230922093358"
                image = f"{folder}/{name}.png"
                _png(root / "realiad_1024" / cls / image, rng.integers(0, 255, (SIZE, SIZE, 3), np.uint8))
                mask = None
                if view in visible:
                    mask = f"{folder}/{name}_mask.png"
                    _png(root / "realiad_1024" / cls / mask, _mask(view))
                info[split].append({"category": cls, "anomaly_class": code, "image_path": image, "mask_path": mask})
                if split == "test":
                    expected.append({"cls": cls, "sample": f"{cls}_{n:04d}_{state}", "view": view,
                                     "label": int(mask is not None), "code": code})
        (root / protocol).mkdir(parents=True, exist_ok=True)
        (root / protocol / f"{cls}.json").write_text(json.dumps(info))
    return pd.DataFrame(expected)


def test_records_labels_views_and_masks(tmp_path):
    expected = make_realiad(tmp_path)
    train = realiad_records(tmp_path, "train")
    assert len(train) == 2 * 2 * 5 and {r.cls for r in train} == {"audiojack", "toy_brick"}  # unified train set
    assert all(r.label == 0 and r.mask is None for r in train)
    test = realiad_records(tmp_path, "test")
    got = pd.DataFrame({"cls": [r.cls for r in test], "view": [record_view(r) for r in test],
                        "label": [r.label for r in test], "code": [r.defect.split("/")[0] for r in test]})
    pd.testing.assert_frame_equal(got, expected[["cls", "view", "label", "code"]])
    # A defective object's views without a visible defect are normal images (official loader).
    qs = [r for r in test if r.defect.startswith("QS/") and r.cls == "toy_brick"]
    assert [(record_view(r), r.label, r.mask is not None) for r in qs] == [
        ("C1", 1, True), ("C2", 0, False), ("C3", 1, True), ("C4", 0, False), ("C5", 0, False)]
    # Masks served by ADDataset are the files' pixels (32 -> 32, no resize).
    ds = ADDataset(test, image_size=SIZE)
    for i, r in enumerate(test):
        want = _mask(record_view(r)) > 0 if r.label else np.zeros((SIZE, SIZE), bool)
        assert np.array_equal(ds[i]["mask"][0].numpy() > 0, want), r.image
        assert ds[i]["label"] == r.label


def test_classes_filter_and_load_dataset(tmp_path):
    make_realiad(tmp_path / "Real-IAD")
    test = realiad_records(tmp_path / "Real-IAD", "test", classes=["toy_brick"])
    assert {r.cls for r in test} == {"toy_brick"} and len(test) == 15
    ds = load_dataset("realiad", "train", root=tmp_path / "Real-IAD", image_size=16)
    assert len(ds) == 20 and ds.classes == ["audiojack", "toy_brick"] and ds[0]["image"].shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError, match=r"class\(es\) \['usb'\] \(found: \['audiojack', 'toy_brick'\]\)"):
        realiad_records(tmp_path / "Real-IAD", "test", classes=["usb"])


def test_other_protocols_and_nested_json_folder(tmp_path):
    make_realiad(tmp_path, classes=("usb",), protocol="realiad_jsons/realiad_jsons_sv")  # anomalib's layout
    (tmp_path / "realiad_1024").rename(tmp_path / "realiad_256")
    test = realiad_records(tmp_path, "test", protocol="realiad_jsons_sv")
    assert len(test) == 15 and str(test[0].image).startswith(str(tmp_path / "realiad_256"))


def test_missing_data_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        realiad_records(tmp_path / "nowhere", "test")
    text = str(e.value)
    assert "nowhere" in text and "realiad_1024" in text and "realiad_jsons" in text
    assert "https://realiad4ad.github.io/Real-IAD/" in text and "request form" in text
    make_realiad(tmp_path / "r")
    next((tmp_path / "r" / "realiad_1024" / "audiojack").rglob("*_C3_*_mask.png")).unlink()
    with pytest.raises(FileNotFoundError, match="_C3_.*_mask.png"):
        realiad_records(tmp_path / "r", "test")


def test_schema_errors_name_the_missing_key(tmp_path):
    make_realiad(tmp_path, classes=("usb",))
    path = tmp_path / "realiad_jsons" / "usb.json"
    info = json.loads(path.read_text())
    del info["test"][3]["mask_path"]
    path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"usb.json: test\[3\] has no key\(s\) \['mask_path'\]"):
        realiad_records(tmp_path, "test")
    del info["meta"]["prefix"]
    path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"no key 'prefix' in 'meta'.*\n(.*\n)*.*realiad4ad"):
        realiad_records(tmp_path, "test")
    path.write_text(json.dumps({"train": []}))
    with pytest.raises(ValueError, match="no top-level key 'meta'"):
        realiad_records(tmp_path, "train")


def test_sample_scores_match_a_groupby(tmp_path):
    make_realiad(tmp_path)
    test = realiad_records(tmp_path, "test")
    scores = np.random.default_rng(3).random(len(test))
    got = sample_scores(scores, test)
    # Reference: ADEval's sample key regex on the file names, pandas groupby, max of label and score.
    pattern = re.compile(r"([a-zA-Z][a-zA-Z0-9_]*_[0-9]{4}_[A-Z][A-Z_]*[A-Z])_C[0-9]_")
    table = pd.DataFrame({"key": [pattern.search(r.image.name).group(1) for r in test],
                          "label": [r.label for r in test], "score": scores})
    ref = table.groupby("key", sort=False).agg(label=("label", "max"), score=("score", "max"), n=("score", "size"))
    assert got.keys == list(ref.index) and len(got.keys) == 2 * 3
    assert np.array_equal(got.labels, ref.label.to_numpy())
    assert np.allclose(got.scores, ref.score.to_numpy())
    assert list(got.views) == [5] * 6 and list(got.labels) == [0, 1, 1] * 2
    assert got.classes == ["audiojack"] * 3 + ["toy_brick"] * 3
    assert sample_key(test[0]) == "audiojack_0003_OK"
    with pytest.raises(ValueError, match="one score per record"):
        sample_scores(scores[:-1], test)
