"""An interactive explorer of anomaly maps: class, test image, model, training step, threshold, attention.

    ex = Explorer.from_results(S)                      # the cached shortcut_<model> runs (notebook 09)
    ex = Explorer({"uniad": run_dir}, test)            # any run folders, on their test FeatureSet
    display(ex)                                        # the default layout, or lay out ex.cls, ex.image, ...

All the logic is here; a notebook only lays the controls out. The anomaly maps of every test image
are computed once per (model, step), by the one evaluation path (:func:`adnotes.train.anomaly_maps`,
then :func:`adnotes.evaluation.full_size_maps`), and cached; the callbacks only slice the cached
arrays, threshold them and update the artists of one matplotlib figure.

The figure is drawn by Agg into an ``ipywidgets.Image``, so the explorer works under any matplotlib
backend and headless. Under ipympl (``%matplotlib widget``) the figure's own canvas is shown
instead, and a click on a panel picks the token whose attention is drawn; the row and column
sliders always work.

For tests and scripts: ``ex.state`` holds what is selected and the numbers shown (cls, index,
model, step, threshold, precision, recall, f1, class_precision, class_recall, class_f1, token, ...)
and ``ex.drawn`` the arrays of the last redraw (image, map, truth, mask, attention, blocked).
"""
from __future__ import annotations

import io
import textwrap
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as widgets
import matplotlib
import numpy as np
import pandas as pd
import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy import ndimage
from sklearn.metrics import precision_recall_curve

from .evaluation import full_size_maps
from .features import FeatureSet
from .metrics import image_score
from .models.uniad import NeighborMaskedAttention, neighbor_mask, recording_attention
from .plots import denormalize
from .train import Config, anomaly_maps, load_features, load_model

__all__ = ["Explorer", "MODELS", "precision_recall_f1"]

MODELS = ("mlp", "cnn", "transformer", "uniad")  # the four curves of UniAD Fig. 2a (recipes shortcut_<model>)
NO_ATTENTION = {
    "mlp": "The MLP has no attention: each output token is rebuilt from its own input token only (UniAD App. B.1).",
    "cnn": "The CNN has no attention: each output token sees only its convolution window (UniAD App. B.1).",
}
# Mask panel colours (RGBA): found defect pixels, false alarms, missed defect pixels.
TP, FP, FN = (1.0, 0.85, 0.0, 0.65), (0.9, 0.1, 0.1, 0.65), (0.1, 0.45, 1.0, 0.65)


def precision_recall_f1(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Pixel precision, recall and F1 of a binary mask against the ground truth; NaN where 0/0
    (recall of an image without defect, precision of an empty mask)."""
    tp = int(np.count_nonzero(pred & truth))
    fp, fn = int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(truth)) - tp
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)


@dataclass
class _Run:
    """A run folder the explorer can show: its config, model name and the steps it kept weights of."""

    path: Path
    cfg: Config
    steps: list[int]   # 0 (untrained), the kept steps, the final step
    final: int
    curves: pd.DataFrame | None  # the first seed's curves.csv: per step and class, the metrics of training

    @classmethod
    def open(cls, path: str | Path) -> "_Run":
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise FileNotFoundError(f"{path} is not a run folder (no config.yaml)")
        cfg = Config.from_dict(yaml.safe_load((path / "config.yaml").read_text()))
        if cfg.train.mode != "unified":
            raise ValueError(f"{path}: the explorer shows unified runs (one model for all classes), not "
                             f"{cfg.train.mode!r} ones")
        folder = path / f"seed{cfg.train.seeds[0]}"
        curves = folder / "curves.csv"
        curves = pd.read_csv(curves) if curves.is_file() else None
        final = int(curves.step.max()) if curves is not None else cfg.train.steps
        kept = {int(p.stem[len("weights_step"):]) for p in folder.glob("weights_step*.pt")}
        return cls(path, cfg, sorted(kept | {0, final}), final, curves)

    def logged(self, step: int, cls: str, metric: str) -> float:
        """A metric the trainer logged at ``step`` for class ``cls`` (NaN if that step was not evaluated)."""
        if self.curves is None or metric not in self.curves:
            return float("nan")
        rows = self.curves[(self.curves.step == step) & (self.curves.cls == cls)]
        return float(rows[metric].iloc[0]) if len(rows) else float("nan")

    def model(self, step: int, test: FeatureSet, device: str | torch.device) -> torch.nn.Module:
        kept = (self.path / f"seed{self.cfg.train.seeds[0]}" / f"weights_step{step}.pt").is_file()
        if step == self.final and not kept:  # the final weights (weights.pt / checkpoint.pt)
            return load_model(self.path, features=test, device=device)
        return load_model(self.path, step=step, features=test, device=device)  # step 0: the seeded init


class Explorer:
    """Widgets over the cached anomaly maps of one or more runs; see the module docstring."""

    def __init__(self, runs: Mapping[str, str | Path], test: FeatureSet | None = None, *,
                 images=None, defects: Sequence[str] | None = None, device: str | torch.device = "cpu",
                 canvas: str = "auto", keep: int = 6, dpi: int = 72):
        """``runs``: label -> run folder (config.yaml, seed<k>/ with weights). ``test``: their test
        features (default: loaded from the first run's data config, with its dataset's images).
        ``images``: an ADDataset, or (N, S, S, 3) images in [0, 1] or uint8 (default: grey).
        ``canvas``: "image" (Agg PNG in an ipywidgets.Image), "ipympl", or "auto" (ipympl when it
        is matplotlib's backend). ``keep``: how many (model, step) map sets stay in memory."""
        if not runs:
            raise ValueError("no runs to explore: pass {label: run folder}")
        self.runs = {label: _Run.open(path) for label, path in runs.items()}
        first = next(iter(self.runs.values())).cfg
        if test is None:
            if different := [k for k, r in self.runs.items() if r.cfg.data != first.data]:
                raise ValueError(f"runs {different} were trained on other data than {next(iter(self.runs))}: "
                                 "explore runs of one data config together")
            test = load_features(first)[1]
            if images is None:
                images = self._dataset(first)
        if test.masks is None:
            raise ValueError("the test features have no masks: the explorer needs pixel ground truth")
        self.test, self.device, self.keep, self.dpi = test, torch.device(device), keep, dpi
        self.truth = test.masks.numpy()                                        # (N, S, S) bool
        self.size = self.truth.shape[-1]
        self.grid = test.grid                                                  # (h, w) tokens
        self.labels = test.labels.numpy()
        self._images = images
        records = getattr(images, "records", None)
        self.defects = list(defects) if defects is not None else (
            [r.defect for r in records] if records is not None else
            ["anomalous" if y else "good" for y in self.labels])
        self.classes = sorted(set(test.classes))
        self._cache: OrderedDict[tuple[str, int], dict] = OrderedDict()     # (model, step) -> maps
        self._models: dict[tuple[str, int], torch.nn.Module] = {}
        self._class_pixels: tuple | None = None                             # (key, maps, truth) of a class
        self._attention: tuple | None = None                                # (key, {layer: (HW, HW)})
        self._quiet = False
        self.state: dict = {}
        self.drawn: dict = {}
        self._build_widgets()
        self._build_figure(canvas)
        self._connect()
        with self._hold():
            self._set_steps()
            self._set_images()
        self._maps_changed()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_results(cls, session, models: Sequence[str] = MODELS, **kwargs) -> "Explorer":
        """The cached ``shortcut_<model>`` results of the session's mode (full mode falls back to the
        quick ones); models without a cached result are left out with a note. Nothing is trained."""
        from . import results

        runs = {}
        for m in models:
            name = f"shortcut_{m}"
            if results.cached(name, session.quick) is not None:
                runs[m] = results.load_or_train(name, session)
            elif not session.quick and (folder := results.cached(name, quick=True)) is not None:
                print(f"{m}: no full-mode result {name!r}; showing the quick one ({folder.name})")
                runs[m] = folder
            else:
                print(f"{m}: no cached result {name!r}, so it is not offered "
                      f"(`python -m adnotes results --only {name}` makes it)")
        if not runs:
            raise FileNotFoundError(f"no cached shortcut_<model> result for any of {list(models)}: run "
                                    "`python -m adnotes results --only shortcut_mlp` first (about 20 min on a CPU)")
        return cls(runs, **kwargs)

    @staticmethod
    def _dataset(cfg: Config):
        from .data import load_dataset

        d = cfg.data
        return load_dataset(d.dataset, "test", root=d.root, classes=d.classes, normal=d.normal,
                            image_size=d.image_size)

    def _build_widgets(self) -> None:
        w, wide = widgets, {"description_width": "initial"}
        self.cls = w.Dropdown(options=self.classes, description="class", style=wide)
        self.image = w.Dropdown(description="image", style=wide)
        self.model = w.Dropdown(options=list(self.runs), description="model", style=wide)
        self.step = w.Dropdown(description="step", style=wide)
        self.threshold = w.FloatSlider(description="threshold", min=0.0, max=1.0, step=0.001, value=0.5,
                                       continuous_update=False, readout_format=".4g", style=wide,
                                       layout=w.Layout(width="420px"))
        self.best_f1 = w.Button(description="best F1 for the class", tooltip="the threshold of the highest "
                                "pixel F1 over all test images of the class", layout=w.Layout(width="180px"))
        self.default = w.Button(description="1 % of normal pixels", tooltip="the threshold that flags 1 % "
                                "of the pixels of the normal test images", layout=w.Layout(width="180px"))
        self.layer = w.Dropdown(description="attention layer", style=wide)
        h, wd = self.grid
        self.row = w.IntSlider(description="token row", min=0, max=h - 1, value=h // 2, style=wide,
                               continuous_update=False)
        self.col = w.IntSlider(description="token col", min=0, max=wd - 1, value=wd // 2, style=wide,
                               continuous_update=False)
        self.metrics = w.HTML()
        self.status = w.HTML()
        for widget, name in ((self.threshold, "threshold"), (self.metrics, "metrics"), (self.status, "status"),
                             (self.best_f1, "best-f1"), (self.model, "model"), (self.step, "step")):
            widget.add_class(f"adnotes-{name}")  # stable handles for browser tests

    def _build_figure(self, canvas: str) -> None:
        if canvas == "auto":
            backend = matplotlib.get_backend().lower()  # "widget" after %matplotlib widget
            canvas = "ipympl" if backend in ("widget", "ipympl") or "ipympl" in backend else "image"
        if canvas not in ("image", "ipympl"):
            raise ValueError(f"canvas must be 'image', 'ipympl' or 'auto', not {canvas!r}")
        self.canvas_kind = canvas
        size = (13.5, 3.7)
        if canvas == "ipympl":  # the figure's canvas is itself a widget, and it reports clicks
            import matplotlib.pyplot as plt

            with plt.ioff():
                self.fig = plt.figure(figsize=size, dpi=self.dpi, layout="constrained")
            self.fig.canvas.header_visible = self.fig.canvas.toolbar_visible = False  # a click picks a token
            self.view = self.fig.canvas
        else:
            self.fig = Figure(figsize=size, dpi=self.dpi, layout="constrained")
            FigureCanvasAgg(self.fig)
            self.view = widgets.Image(format="png")
            self.view.add_class("adnotes-view")
        self.axes = axes = self.fig.subplots(1, 4)
        s = self.size
        extent = (-0.5, s - 0.5, s - 0.5, -0.5)  # the token grid stretched over the image
        self._im = [ax.imshow(np.zeros((s, s, 3))) for ax in axes]             # the image under every panel
        self._map_im = axes[1].imshow(np.zeros((s, s)), cmap="jet", alpha=0.6, vmin=0, vmax=1)
        self._truth_im = [ax.imshow(np.zeros((s, s, 4)), zorder=3) for ax in axes[:2]]  # ground-truth outline
        self._mask_im = axes[2].imshow(np.zeros((s, s, 4)))
        self._att_im = axes[3].imshow(np.zeros(self.grid), cmap="magma", alpha=0.7, extent=extent, vmin=0, vmax=1)
        self.fig.colorbar(self._map_im, ax=axes[1], shrink=0.8, label="anomaly score")
        self._token_box = [Rectangle((0, 0), 1, 1, fill=False, ec="cyan", lw=1.5) for _ in range(2)]
        axes[1].add_patch(self._token_box[0])
        axes[3].add_patch(self._token_box[1])
        self._window_box = Rectangle((0, 0), 1, 1, fill=False, ec="white", lw=1.2, ls="--")
        axes[3].add_patch(self._window_box)
        self._att_text = axes[3].text(0.5, 0.5, "", transform=axes[3].transAxes, ha="center", va="center",
                                      fontsize=9, bbox=dict(fc="white", alpha=0.85, ec="0.7"))
        for ax in axes:
            ax.set_xticks([]), ax.set_yticks([])
            ax.grid(False)
        axes[0].set_title("image · defect outline (red)", fontsize=10)
        axes[2].set_title("map ≥ threshold: found (yellow),\nfalse alarm (red), missed (blue)", fontsize=9)

    def _connect(self) -> None:
        self.cls.observe(lambda _: self._guarded(self._class_changed), "value")
        self.image.observe(lambda _: self._guarded(self._image_changed), "value")
        self.model.observe(lambda _: self._guarded(self._model_changed), "value")
        self.step.observe(lambda _: self._guarded(self._maps_changed), "value")
        self.threshold.observe(lambda _: self._guarded(self._threshold_changed), "value")
        for widget in (self.layer, self.row, self.col):
            widget.observe(lambda _: self._guarded(self._attention_changed), "value")
        self.best_f1.on_click(lambda _: self.set_threshold(self.best_threshold()))
        self.default.on_click(lambda _: self.set_threshold(self._current["default"]))
        self.fig.canvas.mpl_connect("button_press_event", self._on_click)

    def layout(self) -> widgets.Widget:
        """The default layout: selection, threshold, numbers, the figure, the attention controls."""
        if not hasattr(self, "_layout"):
            w = widgets
            self._layout = w.VBox([
                w.HBox([self.cls, self.image, self.model, self.step]),
                w.HBox([self.threshold, self.best_f1, self.default]),
                self.metrics, self.view,
                w.HBox([self.layer, self.row, self.col]), self.status])
        return self._layout

    def _repr_mimebundle_(self, **kwargs):
        return self.layout()._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ maps: computed once per (model, step)
    def maps(self, model: str | None = None, step: int | None = None) -> dict:
        """The cached maps of (model, step): ``full`` (N, S, S) float32 at image size, ``default``
        threshold (1 % of the normal test pixels score above it), ``vmax``. Computed on first use by
        the one evaluation path, then kept (the ``keep`` most recent)."""
        model, step = model or self.model.value, self.step.value if step is None else step
        key = (model, step)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        run = self.runs[model]
        start = time.perf_counter()
        net = self._network(model, step)
        grid = anomaly_maps(net, self.test, device=self.device)               # (N, h, w)
        full = full_size_maps(grid, self.size, run.cfg.eval.sigma).numpy()     # (N, S, S), as evaluate_maps
        normal = full[self.labels == 0] if (self.labels == 0).any() else full
        entry = {"full": full, "default": float(np.quantile(normal, 0.99)),
                 "vmax": float(full.max()), "seconds": time.perf_counter() - start}
        self._cache[key] = entry
        while len(self._cache) > self.keep:  # forget the least recently shown (model, step)
            old, _ = self._cache.popitem(last=False)
            self._models.pop(old, None)
        return entry

    def _network(self, model: str, step: int) -> torch.nn.Module:
        key = (model, step)
        if key not in self._models:
            self._models[key] = self.runs[model].model(step, self.test, self.device)
        return self._models[key]

    # ------------------------------------------------------------------ callbacks
    @contextmanager
    def _hold(self):
        """Set several controls without each one redrawing."""
        quiet, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = quiet

    def _guarded(self, callback) -> None:
        if not self._quiet:
            callback()

    def _set_images(self) -> None:
        """Image options of the class, ``#k · defect``; the first anomalous image is selected."""
        idx = [i for i, c in enumerate(self.test.classes) if c == self.cls.value]
        options = [(f"#{k} · {self.defects[i]}", i) for k, i in enumerate(idx)]
        self.image.options = options
        self.image.value = next((i for i in idx if self.labels[i]), idx[0])

    def _set_steps(self) -> None:
        run = self.runs[self.model.value]
        labels = {0: "0 (untrained)", run.final: f"{run.final} (final)"}
        previous = self.step.value
        self.step.options = [(labels.get(s, str(s)), s) for s in run.steps]
        self.step.value = previous if previous in run.steps else run.final

    def _class_changed(self) -> None:
        with self._hold():
            self._set_images()
        self._image_changed()

    def _model_changed(self) -> None:
        with self._hold():
            self._set_steps()
        self._maps_changed()

    def _maps_changed(self) -> None:
        """A new (model, step): compute or fetch its maps, reset the threshold, refresh everything."""
        self.status.value = f"computing the maps of {self.model.value} at step {self.step.value} …"
        current = self._current = self.maps()
        net = self._network(self.model.value, self.step.value)
        layers = [(self._layer_label(name, net), name) for name, m in net.named_modules()
                  if isinstance(m, NeighborMaskedAttention)]
        with self._hold():
            self._set_range(current["vmax"], current["default"])
            previous = self.layer.value
            self.layer.options = layers or [("(no attention)", "")]
            self.layer.value = previous if previous in [v for _, v in layers] else (layers[0][1] if layers else "")
            for widget in (self.layer, self.row, self.col):
                widget.disabled = not layers
        self.status.value = (f"maps of {self.model.value} at step {self.step.value}: {len(current['full'])} test "
                             f"images, computed once in {current['seconds']:.1f} s and cached")
        self._image_changed()

    def _set_range(self, vmax: float, value: float) -> None:
        slider = self.threshold
        top = max(vmax, 1e-6)
        if top >= slider.max:
            slider.max, slider.value = top, value
        else:
            slider.value, slider.max = value, top
        slider.step = top / 1000

    def _image_changed(self) -> None:
        i, current = self.image.value, self._current
        amap, truth = current["full"][i], self.truth[i]
        image = self._image(i)
        outline = np.zeros((*truth.shape, 4))
        outline[truth & ~ndimage.binary_erosion(truth)] = (1, 0, 0, 1)
        for im in self._im:
            im.set_data(image)
        for im in self._truth_im:
            im.set_data(outline)
        self._map_im.set_data(amap)
        self._map_im.set_clim(0, current["vmax"])
        self.axes[1].set_title(f"anomaly map\n{self.model.value}, step {self.step.value}", fontsize=10)
        self.drawn.update(image=image, map=amap, truth=truth)
        self._threshold_changed(render=False)
        self._attention_changed(render=False)
        self.render()

    def _threshold_changed(self, render: bool = True) -> None:
        """Binary mask = map >= threshold; pixel precision / recall / F1 for the image and the class."""
        t, i = float(self.threshold.value), self.image.value
        amap, truth = self.drawn["map"], self.drawn["truth"]
        mask = amap >= t
        overlay = np.zeros((*mask.shape, 4))
        overlay[mask & truth], overlay[mask & ~truth], overlay[~mask & truth] = TP, FP, FN
        self._mask_im.set_data(overlay)
        precision, recall, f1 = precision_recall_f1(mask, truth)
        maps, truths = self._pixels_of_class()
        class_p, class_r, class_f1 = precision_recall_f1(maps >= t, truths)
        ev = self.runs[self.model.value].cfg.eval  # the image score of the evaluation path (UniAD: pooled max)
        score = float(image_score(torch.from_numpy(amap[None]), pool=ev.pool, reduce=ev.reduce)[0])
        class_auroc = self.runs[self.model.value].logged(self.step.value, self.cls.value, "image_AUROC")
        self.drawn.update(mask=mask)
        self.state.update(cls=self.cls.value, index=i, model=self.model.value, step=self.step.value, threshold=t,
                          precision=precision, recall=recall, f1=f1, class_precision=class_p,
                          class_recall=class_r, class_f1=class_f1, mask_pixels=int(mask.sum()),
                          truth_pixels=int(truth.sum()), image_score=score,
                          class_image_AUROC=class_auroc)
        self.axes[2].set_xlabel(f"threshold {t:.4g}: {int(mask.sum())} px flagged", fontsize=9)
        self.metrics.value = self._metrics_html()
        if render:
            self.render()

    def _pixels_of_class(self) -> tuple[np.ndarray, np.ndarray]:
        key = (self.model.value, self.step.value, self.cls.value)
        if self._class_pixels is None or self._class_pixels[0] != key:
            idx = np.array([k for k, c in enumerate(self.test.classes) if c == self.cls.value])
            self._class_pixels = (key, self._current["full"][idx], self.truth[idx])
        return self._class_pixels[1:]

    def _metrics_html(self) -> str:
        s, i = self.state, self.state["index"]
        f = lambda v: "–" if np.isnan(v) else f"{v:.3f}"  # noqa: E731
        note = " (no defect in this image: recall is undefined)" if not s["truth_pixels"] else ""
        n = sum(c == s["cls"] for c in self.test.classes)
        return (f"<b>this image</b> ({self.defects[i]}, image score {s['image_score']:.4g}): "
                f"precision <b>{f(s['precision'])}</b> · recall <b>{f(s['recall'])}</b> · "
                f"F1 <b>{f(s['f1'])}</b> · {s['mask_pixels']} px flagged, {s['truth_pixels']} px defect{note}<br>"
                f"<b>class {s['cls']}</b> (all {n} test images, pixels pooled): precision {f(s['class_precision'])}"
                f" · recall {f(s['class_recall'])} · F1 {f(s['class_f1'])} · image AUROC "
                f"{f(s['class_image_AUROC'])} (logged in training, seed {self.runs[s['model']].cfg.train.seeds[0]})")

    def _attention_changed(self, render: bool = True) -> None:
        """The head-averaged attention of the chosen token in the chosen layer, over the image."""
        h, w = self.grid
        row, col, s = self.row.value, self.col.value, self.size
        cell = (s / w, s / h)
        for box in self._token_box:
            box.set_bounds(col * cell[0] - 0.5, row * cell[1] - 0.5, cell[0], cell[1])
        self.state.update(token=(row, col), layer=self.layer.value or None, attention_in_window=None)
        net = self._network(self.model.value, self.step.value)
        if not self.layer.value:
            name = self.runs[self.model.value].cfg.model.name
            message = NO_ATTENTION.get(name, f"{self.model.value} has no attention layers to show.")
            self._att_text.set_text(textwrap.fill(message, 34))
            self._att_text.set_visible(True)
            self._att_im.set_visible(False)
            self._window_box.set_visible(False)
            self._token_box[1].set_visible(False)
            self.axes[3].set_title("attention\n", fontsize=10)
            self.drawn.update(attention=None, blocked=None)
        else:
            weights = self._attention_of_image()[self.layer.value][row * w + col].reshape(h, w)  # (h, w)
            blocked = self._blocked(net, self.layer.value, row, col)
            self._att_im.set_data(weights)
            self._att_im.set_clim(0, max(float(weights.max()), 1e-6))
            self._att_im.set_visible(True)
            self._att_text.set_visible(False)
            self._token_box[1].set_visible(True)
            if blocked is not None:  # the k×k neighbour window the token may not look at (Fig. 5)
                rows, cols = np.nonzero(blocked)
                self._window_box.set_bounds(cols.min() * cell[0] - 0.5, rows.min() * cell[1] - 0.5,
                                            (cols.max() - cols.min() + 1) * cell[0],
                                            (rows.max() - rows.min() + 1) * cell[1])
                self.state["attention_in_window"] = float(weights[blocked].sum())
            self._window_box.set_visible(blocked is not None)
            masked = "NMA window dashed" if blocked is not None else "full attention"
            self.axes[3].set_title(f"{self.layer.value}, token ({row}, {col})\n{masked}", fontsize=10)
            self.drawn.update(attention=weights, blocked=blocked)
        if render:
            self.render()

    def _attention_of_image(self) -> dict[str, np.ndarray]:
        """{layer: (HW, HW)} head-averaged weights for the current image (one forward pass, kept)."""
        key = (self.model.value, self.step.value, self.image.value)
        if self._attention is None or self._attention[0] != key:
            net = self._network(self.model.value, self.step.value)
            x = self.test.take(torch.tensor([self.image.value]), self.device)  # (1, C, h, w)
            with torch.no_grad(), recording_attention(net) as recorded:
                net(x)
            self._attention = (key, {name: weights[0].float().cpu().numpy() for name, weights in recorded.items()})
        return self._attention[1]

    @staticmethod
    def _nma_flag(net: torch.nn.Module, layer: str) -> bool:
        """Whether a layer uses the neighbour mask: config.neighbor_mask = (encoder, attn1, attn2)."""
        flags = net.config.neighbor_mask
        return flags[0] if layer.startswith("encoder") else flags[1] if layer.endswith("attn1") else flags[2]

    def _blocked(self, net, layer: str, row: int, col: int) -> np.ndarray | None:
        if not self._nma_flag(net, layer):
            return None
        h, w = self.grid
        return neighbor_mask(h, w, net.config.neighbor_size)[row * w + col].reshape(h, w).cpu().numpy()

    def _layer_label(self, name: str, net) -> str:
        k = net.config.neighbor_size
        return f"{name} ({f'NMA {k[0]}×{k[1]}' if self._nma_flag(net, name) else 'full'})"

    def _token_at(self, y: float, x: float) -> tuple[int, int]:
        """The token (row, col) under image pixel (y, x): token (r, c) covers pixels r·S/h … (r+1)·S/h."""
        h, w = self.grid
        return (int(np.clip((y + 0.5) * h / self.size, 0, h - 1)), int(np.clip((x + 0.5) * w / self.size, 0, w - 1)))

    def _on_click(self, event) -> None:
        """A click on any panel (ipympl) picks the token under it."""
        if event.inaxes in self.axes and event.xdata is not None and self.layer.value:
            self.select_token(*self._token_at(event.ydata, event.xdata))

    # ------------------------------------------------------------------ public helpers
    def select_token(self, row: int, col: int) -> None:
        """Show the attention of token (row, col) (what a click on the figure does)."""
        with self._hold():
            self.row.value, self.col.value = row, col
        self._attention_changed()

    def hottest_token(self) -> tuple[int, int]:
        """The token under the highest value of the current image's anomaly map."""
        return self._token_at(*np.unravel_index(np.argmax(self.drawn["map"]), self.drawn["map"].shape))

    def set_threshold(self, value: float) -> None:
        self.threshold.value = min(max(float(value), self.threshold.min), self.threshold.max)

    def best_threshold(self) -> float:
        """The threshold of the highest pixel F1 over all test images of the current class (exact sweep)."""
        maps, truths = self._pixels_of_class()
        if not truths.any():
            return self._current["default"]
        precision, recall, thresholds = precision_recall_curve(truths.ravel(), maps.ravel())
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        return float(thresholds[np.argmax(f1[:-1])])

    def _image(self, i: int) -> np.ndarray:
        """(S, S, 3) float image in [0, 1]."""
        if self._images is None:
            return np.full((self.size, self.size, 3), 0.5)
        if hasattr(self._images, "records"):  # an ADDataset: the same resize as the features
            return denormalize(self._images[i]["image"])
        image = np.asarray(self._images[i], dtype=np.float32)
        return image / 255 if image.max() > 1 else image

    def render(self) -> None:
        """Draw the figure (Agg PNG into the Image widget, or the ipympl canvas)."""
        if self.canvas_kind == "ipympl":
            self.fig.canvas.draw_idle()
            return
        buffer = io.BytesIO()
        self.fig.canvas.print_png(buffer)
        self.view.value = self.drawn["png"] = buffer.getvalue()
