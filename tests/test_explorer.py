"""The explorer widget, headless: set controls' values and click buttons as a reader would, then check
the state and the drawn arrays against independent computations (scikit-learn, hand-made maps)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.backend_bases import MouseEvent
from sklearn.metrics import f1_score, precision_score, recall_score

import adnotes.explorer as explorer_module
from adnotes.explorer import Explorer
from adnotes.metrics import f1_max
from adnotes.models.uniad import recording_attention
from adnotes.train import load_model, train
from fixtures import tiny_config, tiny_features


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny UniAD (3×3 neighbour mask on the 4×4 grid), MLP and transformer: 6 steps, weights kept at step 2."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder, feats = tmp_path_factory.mktemp("runs"), tiny_features()
    uniad = tiny_config()
    uniad.model.args["neighbor_size"] = 3
    mlp, transformer = tiny_config(), tiny_config()
    mlp.model.name, transformer.model.name = "mlp", "transformer"
    mlp.model.args = transformer.model.args = {"hidden_dim": 16, "ffn_dim": 32, "num_encoder_layers": 1,
                                               "num_decoder_layers": 1, "dropout": 0.0}
    out = {}
    for name, cfg in (("uniad", uniad), ("mlp", mlp), ("transformer", transformer)):
        cfg.eval.keep_steps = [2]
        out[name] = train(cfg, name, runs=folder, features=feats)
    yield out, feats[1]
    torch.set_num_threads(threads)


@pytest.fixture
def ex(runs):
    folders, test = runs
    return Explorer(folders, test)


def independent_map(run, test, index, step=None):
    """‖x - model(x)‖₂ over channels, bilinear (align_corners) to the 32×32 masks: by hand."""
    model = load_model(run, step=step, features=test)
    with torch.no_grad():
        x = test.features[index:index + 1].float()
        grid = ((model(x) - x) ** 2).sum(1).sqrt()
        return F.interpolate(grid[:, None], size=(32, 32), mode="bilinear", align_corners=True)[0, 0].numpy()


def test_the_controls_offer_the_runs_steps_classes_and_images(ex):
    assert ex.model.options == ("uniad", "mlp", "transformer") and ex.cls.options == ("a", "b")
    assert [v for _, v in ex.step.options] == [0, 2, 6] and ex.step.value == 6  # untrained, kept, final
    assert [label for label, _ in ex.step.options] == ["0 (untrained)", "2", "6 (final)"]
    assert [v for _, v in ex.image.options] == list(range(8))                  # the 8 test images of class a
    assert ex.image.value == 1 and "anomalous" in ex.image.label               # the first defective one
    ex.cls.value = "b"
    assert [v for _, v in ex.image.options] == list(range(8, 16)) and ex.state["cls"] == "b"
    assert ex.state["index"] == ex.image.value == 9


def test_the_drawn_map_is_the_models_map_and_the_mask_follows_the_threshold(ex, runs):
    folders, test = runs
    np.testing.assert_allclose(ex.drawn["map"], independent_map(folders["uniad"], test, 1), rtol=1e-4, atol=1e-4)
    counts = []
    for t in np.linspace(0.2, 0.9, 4) * ex.threshold.max:
        ex.threshold.value = t
        assert ex.state["threshold"] == pytest.approx(t)
        np.testing.assert_array_equal(ex.drawn["mask"], ex.drawn["map"] >= t)
        counts.append(int(ex.drawn["mask"].sum()))
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    assert ex.state["mask_pixels"] == counts[-1]


@pytest.mark.parametrize("index", [1, 2])  # a defective image, a good one (recall undefined)
def test_precision_recall_f1_equal_scikit_learn_on_the_same_map(ex, runs, index):
    folders, test = runs
    ex.image.value = index
    ex.threshold.value = 0.5 * ex.threshold.max
    t = ex.threshold.value
    truth = test.masks[index].numpy().ravel()
    pred = independent_map(folders["uniad"], test, index).ravel() >= t
    for key, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        assert ex.state[key] == pytest.approx(score(truth, pred, zero_division=np.nan), nan_ok=True)
    # The class: every pixel of the 8 test images of class a, pooled.
    maps = np.stack([independent_map(folders["uniad"], test, i) for i in range(8)]).ravel()
    truths = test.masks[:8].numpy().ravel()
    assert ex.state["class_precision"] == pytest.approx(precision_score(truths, maps >= t), abs=1e-6)
    assert ex.state["class_recall"] == pytest.approx(recall_score(truths, maps >= t), abs=1e-6)
    assert ex.state["class_f1"] == pytest.approx(f1_score(truths, maps >= t), abs=1e-6)
    assert f"{ex.state['f1']:.3f}" in ex.metrics.value or np.isnan(ex.state["f1"])


def test_the_best_f1_button_reaches_the_class_f1_max(ex):
    ex.threshold.value = 0.1 * ex.threshold.max
    before = ex.state["class_f1"]
    ex.best_f1.click()
    maps, truths = ex.maps()["full"][:8], ex.truth[:8]
    assert ex.state["class_f1"] == pytest.approx(f1_max(truths, maps), abs=1e-9)  # adnotes.metrics' own sweep
    assert ex.state["class_f1"] >= before
    ex.default.click()  # 1 % of the normal test pixels above the threshold
    normal = ex.maps()["full"][ex.labels == 0]
    assert np.mean(normal >= ex.threshold.value) == pytest.approx(0.01, abs=0.005)


def test_maps_are_computed_once_per_model_and_step(ex, runs, monkeypatch):
    folders, test = runs
    calls = []
    real = explorer_module.anomaly_maps
    monkeypatch.setattr(explorer_module, "anomaly_maps", lambda *a, **k: calls.append(1) or real(*a, **k))
    ex.step.value = 0
    np.testing.assert_allclose(ex.drawn["map"], independent_map(folders["uniad"], test, 1, step=0), atol=1e-4)
    assert ex.state["step"] == 0 and ex.axes[1].get_title().endswith("step 0")
    ex.step.value = 2
    for _ in range(2):  # back and forth: slicing the cache, no new forward pass
        ex.step.value, ex.image.value, ex.step.value = 0, 3, 6
        ex.threshold.value = 0.3 * ex.threshold.max
    assert len(calls) == 2  # steps 0 and 2; the final maps were computed when the explorer was built
    ex.model.value = "mlp"
    assert len(calls) == 3 and ex.step.value == 6 and ex.state["model"] == "mlp"


def test_attention_of_a_token_sums_to_one_and_is_zero_in_the_neighbour_window(ex, runs):
    folders, test = runs
    assert [v for _, v in ex.layer.options] == ["encoder.0.attn", "decoder.0.attn1", "decoder.0.attn2"]
    model = load_model(folders["uniad"], features=test)
    with torch.no_grad(), recording_attention(model) as recorded:
        model(test.features[1:2].float())
    for layer in [v for _, v in ex.layer.options]:
        ex.layer.value = layer
        ex.select_token(1, 2)
        attention, blocked = ex.drawn["attention"], ex.drawn["blocked"]
        assert attention.shape == (4, 4) and attention.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(attention.ravel(), recorded[layer][0, 1 * 4 + 2].numpy(), atol=1e-6)
        window = np.zeros((4, 4), bool)
        window[0:3, 1:4] = True  # 3×3 around (1, 2)
        np.testing.assert_array_equal(blocked, window)
        assert attention[blocked].max() == 0 and ex.state["attention_in_window"] == 0
        assert ex.state["token"] == (1, 2) and ex.state["layer"] == layer


def test_the_transformer_attends_everywhere(ex):
    ex.model.value = "transformer"  # UniAD without NMA (UniAD App. B.1): no window is hidden
    assert [label for label, _ in ex.layer.options] == [
        "encoder.0.attn (full)", "decoder.0.attn1 (full)", "decoder.0.attn2 (full)"]
    ex.select_token(1, 2)
    assert ex.drawn["blocked"] is None and ex.state["attention_in_window"] is None
    assert ex.drawn["attention"].sum() == pytest.approx(1.0, abs=1e-5) and ex.drawn["attention"][1, 2] > 0
    assert not ex._window_box.get_visible()


def test_a_click_on_the_figure_picks_the_token_under_it(ex):
    ax = ex.axes[0]
    x, y = ax.transData.transform((20.0, 5.0))  # image pixel (col 20, row 5) of 32: token (0, 2) of 4×4
    ex.fig.canvas.callbacks.process("button_press_event", MouseEvent("button_press_event", ex.fig.canvas, x, y, 1))
    assert ex.state["token"] == (0, 2) and (ex.row.value, ex.col.value) == (0, 2)
    assert ex.drawn["attention"].sum() == pytest.approx(1.0, abs=1e-5)
    row, col = np.unravel_index(np.argmax(ex.drawn["map"]), (32, 32))
    assert ex.hottest_token() == (row // 8, col // 8)  # the 8×8-pixel cell of the map's maximum


def test_the_mlp_has_no_attention_and_says_so(ex):
    ex.model.value = "mlp"
    assert ex.layer.disabled and ex.row.disabled and ex.drawn["attention"] is None
    assert "no attention" in ex._att_text.get_text() and ex._att_text.get_visible()
    ex.model.value = "uniad"
    assert not ex.layer.disabled and ex.drawn["attention"] is not None and not ex._att_text.get_visible()


def test_the_figure_is_redrawn_and_images_are_shown(runs):
    folders, test = runs
    images = np.random.default_rng(0).random((len(test), 32, 32, 3))
    ex = Explorer({"uniad": folders["uniad"]}, test, images=images)
    np.testing.assert_allclose(ex.drawn["image"], images[1])
    png = ex.view.value
    assert png[:4] == b"\x89PNG"
    ex.threshold.value = 0.9 * ex.threshold.max
    assert ex.view.value != png and ex.view.value == ex.drawn["png"]
    ex.layout()  # builds once
    assert ex.layout() is ex.layout()


def test_from_results_offers_only_the_cached_models(runs, monkeypatch, capsys):
    from adnotes import results

    folders, test = runs
    monkeypatch.setattr(results, "cached", lambda name, quick=True: folders["mlp"] if name == "shortcut_mlp" else None)
    monkeypatch.setattr(results, "load_or_train", lambda name, session: folders[name.split("_")[1]])
    ex = Explorer.from_results(SimpleNamespace(quick=True), models=("mlp", "uniad"), test=test)
    assert ex.model.options == ("mlp",)
    assert "uniad: no cached result 'shortcut_uniad'" in capsys.readouterr().out
    monkeypatch.setattr(results, "cached", lambda name, quick=True: None)
    with pytest.raises(FileNotFoundError, match="python -m adnotes results"):
        Explorer.from_results(SimpleNamespace(quick=True), test=test)
