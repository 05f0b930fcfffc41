"""Notebook 07's bookkeeping (adnotes.adtr_haloae) against independent references: ADTR's Eq. 6-7 written out by
hand, hand-made run folders, the paper's numbers as listed in the model file, the drawn figures' own data."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from adnotes import adtr_haloae
from adnotes.data import Record

ALPHA = 0.003


def by_hand(e_normal, e_anomalous, anomalous=True):
    """Eq. 6-7 for a constant error per region: φ = sqrt(e² + 1) - 1 (the channel mean of a constant is the
    constant), a quarter of the 64 positions anomalous; no push term without anomalous positions."""
    phi_n, phi_a = math.sqrt(e_normal ** 2 + 1) - 1, math.sqrt(e_anomalous ** 2 + 1) - 1
    if not anomalous:
        return phi_n
    pull, s = 0.75 * phi_n, 0.25 * phi_a
    return pull - ALPHA * math.log(max(1 - math.exp(-s), 1e-6))


@pytest.mark.parametrize("e_n, e_a, anomalous", [(0.0, 1.0, True), (0.5, 2.0, True), (0.3, 0.0, True),
                                                  (0.7, 1.0, False), (0.0, 0.0, False)])
def test_the_two_region_loss_is_eq_6_7_written_out(e_n, e_a, anomalous):
    assert adtr_haloae.two_region_loss(e_n, e_a, anomalous) == pytest.approx(by_hand(e_n, e_a, anomalous), rel=1e-5)


def test_the_pushpull_figure_draws_the_push_and_the_pull():
    errors = np.linspace(0, 2, 9)
    fig, data = adtr_haloae.plot_pushpull(errors)
    push, pull = fig.axes
    assert data == {"errors": errors}
    np.testing.assert_allclose(push.lines[1].get_ydata(), [by_hand(0.5, e) for e in errors], rtol=1e-5)
    np.testing.assert_allclose(pull.lines[1].get_ydata(), [by_hand(e, 1.0, False) for e in errors], rtol=1e-5)
    assert push.get_yscale() == "log"


class Pictures:
    """A stand-in for a training set: three classes of random images."""

    def __init__(self):
        self.records = [Record(image=f"/data/{c}/{k}.png", label=0, cls=c) for c in "abc" for k in range(2)]

    def load_image(self, i):
        return Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), np.uint8))


def test_the_generated_views_change_the_image_and_outline_their_label():
    fig, data = adtr_haloae.plot_generated(Pictures(), [0, 2], ["confetti", "cutpaste_scar"], size=64)
    assert data == {"images": ["/data/a/0.png", "/data/b/0.png"]}
    rows = np.array(fig.axes).reshape(2, 3)
    for row in rows:
        original = row[0].images[0].get_array()
        for ax in row[1:]:
            view, label = ax.images[0].get_array(), ax.collections[0]   # the label's red contour
            assert view.shape == original.shape == (64, 64, 3) and (view != original).any()
            assert label.get_edgecolor()[0][0] == 1.0                              # red


def write_run(folder, per_class, start):
    """A finished one-seed run: seed0/metrics.json (per class + mean) and the step-0 row of curves_summary.csv."""
    (folder / "seed0").mkdir(parents=True)
    table = {c: dict(zip(("image_AUROC", "pixel_AUROC", "pixel_AUPRO"), v)) for c, v in per_class.items()}
    table["mean"] = {m: float(np.mean([t[m] for t in table.values()])) for m in table["a"]}
    (folder / "seed0" / "metrics.json").write_text(json.dumps(table))
    rows = [{"step": 0, "cls": "mean", "metric": "image_AUROC", "mean": start, "std": 0.0},
            {"step": 10, "cls": "mean", "metric": "image_AUROC", "mean": 0.9, "std": 0.0},
            {"step": 0, "cls": "a", "metric": "image_AUROC", "mean": 0.1, "std": 0.0}]
    pd.DataFrame(rows).to_csv(folder / "curves_summary.csv", index=False)
    return folder


def test_the_adtr_table_puts_the_final_means_beside_the_papers_numbers(tmp_path):
    runs = {"ADTR": write_run(tmp_path / "adtr", {"a": (0.8, 0.9, 0.7), "b": (0.6, 0.7, 0.5)}, 0.55),
            "ADTR+": write_run(tmp_path / "plus", {"a": (0.9, 0.95, 0.8), "b": (0.7, 0.85, 0.6)}, 0.7)}
    table = adtr_haloae.adtr_table(runs)
    assert table.loc["ADTR", "image AUROC at its start"] == pytest.approx(55.0)
    assert table.loc["ADTR", "image_AUROC"] == pytest.approx(70.0)
    assert table.loc["ADTR+", "pixel_AUROC"] == pytest.approx(90.0)
    assert table.loc["ADTR+", "pixel_AUPRO"] == pytest.approx(70.0)
    assert table.loc["ADTR", "image_AUROC (paper, MVTec-AD)"] == 96.4      # ADTR Tab. 2 (reading notes)
    assert table.loc["ADTR+", "pixel_AUROC (paper, MVTec-AD)"] == 97.5
    fig, data = adtr_haloae.plot_adtr_curves(runs, table)
    plus = [line for ax in fig.axes for line in ax.lines
            if line.get_label().startswith("ADTR+") and len(line.get_xdata())]  # the image AUROC panel
    assert len(plus) == 1 and list(plus[0].get_xdata()) == [10, 20]   # from ADTR's last step on
    assert data["table"]["index"] == ["ADTR", "ADTR+"]


def test_the_halo_figure_outlines_the_block_and_its_window():
    good, bad = torch.randn(1, 2, 24, 24), torch.randn(1, 2, 24, 24)
    fig = adtr_haloae.plot_halo(good, bad, block=6, halo=1, corner=(6, 12))
    block, window, border = fig.axes[0].patches
    assert block.get_xy() == (11.5, 5.5) and block.get_width() == 6
    assert window.get_xy() == (10.5, 4.5) and window.get_width() == 8
    assert border.get_xy() == (-1.5, -1.5) and border.get_height() == 8
    np.testing.assert_array_equal(fig.axes[2].images[0].get_array(), bad[0, 0].numpy())
