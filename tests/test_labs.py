"""The course labs: the self-checks of adnotes.labs and the lab notebooks in notebooks/labs/.

Each check passes the reference solution (tests/lab_solutions.py, written independently of the
package code) and fails typical wrong solutions with the explanation that names the mistake:
returning False in the default mode, raising LabCheckError in strict mode. Each lab notebook runs
to the end as shipped (the checks say "not implemented yet") and with its TODO cells replaced by
the reference solutions (every check passes).
"""
import inspect
import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import lab_solutions as solutions
from adnotes import labs

REPO = Path(__file__).resolve().parents[1]
LABS = REPO / "notebooks" / "labs"
LAB_PATHS = sorted(LABS.glob("lab*.ipynb"))
CHECKS = {name: getattr(labs, f"check_{name}") for name in solutions.SOLUTIONS}


@pytest.fixture(autouse=True)
def _lenient(monkeypatch):
    monkeypatch.delenv(labs.STRICT_ENV, raising=False)


# ----------------------------------------------------------------------------- typical wrong solutions
def _mask_rule(rule):
    """A neighbour mask from rule(Δrow, Δcol, r) with row-major tokens."""
    def neighbor_mask(height, width, k):
        t = torch.arange(height * width)
        rows, cols = t // width, t % width
        return rule(rows[:, None] - rows[None, :], cols[:, None] - cols[None, :], k // 2)
    return neighbor_mask


def _jitter(std, coin=True):
    """A jitter with the given std(tokens, scale) and one coin per call."""
    def feature_jitter(tokens, scale, prob):
        if coin and not torch.rand(()) < prob:
            return tokens
        return tokens + torch.randn_like(tokens) * std(tokens, scale)
    return feature_jitter


def _local(act=F.silu, norm=True, order=(3, 5)):
    def local_branch(x, p):
        def step(y, name, k=1, groups=1):
            y = F.conv2d(y, p[f"{name}.weight"], p[f"{name}.bias"], padding=k // 2, groups=groups)
            return act(F.instance_norm(y) if norm else y)
        y = x.permute(0, 3, 1, 2)
        parts = {k: step(step(y, f"dw{k}", k, y.shape[1]), f"pw{k}") for k in (3, 5)}
        return step(torch.cat([parts[k] for k in order], dim=1), "merge").permute(0, 2, 3, 1)
    return local_branch


def _sweep(labels, scores, predicted=np.greater_equal, start=True):
    """ROC area from a sweep with a chosen rule (thresholds from high to low)."""
    y, s = np.asarray(labels) != 0, np.asarray(scores, float)
    tpr, fpr = ([0.0], [0.0]) if start else ([], [])
    for t in np.unique(s)[::-1]:
        tpr.append((predicted(s, t) & y).sum() / y.sum())
        fpr.append((predicted(s, t) & ~y).sum() / (~y).sum())
    return float(np.trapezoid(tpr, fpr))


def _one_sample_at_a_time(labels, scores):
    """ROC with one point per sample (ties broken by position), left rectangles."""
    y = np.asarray(labels)[np.argsort(-np.asarray(scores), kind="stable")] != 0
    tpr, fpr = np.r_[0, np.cumsum(y)] / y.sum(), np.r_[0, np.cumsum(~y)] / (~y).sum()
    return float(np.sum(np.diff(fpr) * tpr[:-1]))


def _cut_area(fpr, pro, limit):
    """Area under pro(fpr) up to fpr = limit (interpolated), divided by limit."""
    fpr, pro = np.asarray(fpr), np.asarray(pro)
    x = np.r_[fpr[fpr < limit], limit]
    return float(np.trapezoid(np.interp(x, fpr, pro), x) / limit)


def _aupro_regions(structure=np.ones((3, 3)), stack=False):
    """The reference AUPRO with other region labelling: 4-connectivity, or the whole stack in 3-D."""
    def aupro(masks, maps, fpr_limit=0.3):
        if stack:
            labelled, n = ndimage.label(masks, structure=np.ones((3, 3, 3)))
            regions = [labelled == r for r in range(1, n + 1)]
        else:
            regions = []
            for i in range(len(masks)):
                labelled, n = ndimage.label(masks[i], structure=structure)
                for r in range(1, n + 1):
                    region = np.zeros(masks.shape, bool)
                    region[i] = labelled == r
                    regions.append(region)
        fpr, pro = [0.0], [0.0]
        for t in np.unique(maps)[::-1]:
            fpr.append(((maps >= t) & ~masks).sum() / (~masks).sum())
            pro.append(np.mean([((maps >= t) & region).sum() / region.sum() for region in regions]))
        return _cut_area(fpr, pro, fpr_limit)
    return aupro


def _tokens_norm(t):
    return t.norm(dim=-1, keepdim=True)


WRONG = [  # (check, wrong solution, words the explanation must contain)
    ("neighbor_mask", lambda h, w, k: solutions.neighbor_mask(h, w, k) & ~torch.eye(h * w, dtype=torch.bool),
     "lets a token attend to itself: the centre of the neighbourhood must be masked too"),
    ("neighbor_mask", _mask_rule(lambda di, dj, r: (di.abs() < r) & (dj.abs() < r)), "off by one"),
    ("neighbor_mask", _mask_rule(lambda di, dj, r: (di >= -r) & (di < r) & (dj >= -r) & (dj < r)),
     "not centred"),
    ("neighbor_mask", _mask_rule(lambda di, dj, r: (di.abs() <= 2 * r + 1) & (dj.abs() <= 2 * r + 1)),
     "k is the window's WIDTH"),
    ("neighbor_mask", lambda h, w, k: ~solutions.neighbor_mask(h, w, k), "True must mean blocked"),
    ("neighbor_mask", lambda h, w, k: (torch.arange(h * w)[:, None] - torch.arange(h * w)).abs() <= k // 2,
     "1-D neighbourhood"),
    ("neighbor_mask", lambda h, w, k: solutions.neighbor_mask(h, w, k).float(), "torch.bool"),
    ("neighbor_mask", lambda h, w, k: torch.zeros(h, w, dtype=torch.bool), "one row per QUERY token"),
    ("feature_jitter", _jitter(lambda t, a: a * _tokens_norm(t)), "divide by the number of channels C"),
    ("feature_jitter", _jitter(lambda t, a: a / t.shape[-1]), "same size for every token"),
    ("feature_jitter", _jitter(lambda t, a: a * t.norm(dim=1, keepdim=True) / t.shape[-1]), "wrong axis"),
    ("feature_jitter", _jitter(lambda t, a: (a * _tokens_norm(t) / t.shape[-1]).sqrt()), "VARIANCE"),
    ("feature_jitter", lambda t, a, p: t.add_(torch.randn_like(t) * a * _tokens_norm(t) / t.shape[-1]), "in place"),
    ("feature_jitter", _jitter(lambda t, a: a * _tokens_norm(t) / t.shape[-1], coin=False), "with prob p = 0"),
    ("feature_jitter", lambda t, a, p: t if torch.rand(()) < p else t + torch.randn_like(t) * a * _tokens_norm(t),
     "coin is inverted"),
    ("local_branch", _local(act=F.relu), "SiLU"),
    ("local_branch", _local(norm=False), "InstanceNorms are missing"),
    ("local_branch", _local(order=(5, 3)), "[3×3 branch, 5×5 branch]"),
    ("local_branch", lambda x, p: solutions.local_branch(x, p).permute(0, 3, 1, 2), "channels-first"),
    ("local_branch", lambda x, p: F.conv2d(x.permute(0, 3, 1, 2), p["dw3.weight"], p["dw3.bias"], padding=1),
     "groups=C"),
    ("image_score", lambda m, pool=16: m.amax(dim=(1, 2)), "max of the raw map"),
    ("image_score", lambda m, pool=16: F.avg_pool2d(m[:, None], pool, stride=1).mean(dim=(1, 2, 3)),
     "mean instead of max"),
    ("image_score", lambda m, pool=16: F.avg_pool2d(m[:, None], pool).amax(dim=(1, 2, 3)), "stride=1"),
    ("image_score", lambda m, pool=16: F.avg_pool2d(m[:, None], 16, stride=1).amax(dim=(1, 2, 3)),
     "ignore the `pool` argument"),
    ("image_score", lambda m, pool=16: F.avg_pool2d(m[:, None], pool, stride=1)[:, 0], "MAX over H and W"),
    ("image_score", lambda m, pool=16: F.avg_pool2d(m[:, None], pool, stride=1).max(), "one score per image"),
    ("auroc", lambda y, s: _sweep(y, -np.asarray(s)), "1 − the right value: are scores higher for anomalies"),
    ("auroc", lambda y, s: _sweep(y, s, predicted=np.less_equal), "score ≤ the threshold"),
    ("auroc", lambda y, s: 100 * solutions.auroc(y, s), "not a percentage"),
    ("auroc", lambda y, s: _sweep(y, s, predicted=np.greater), "never reaches (1, 1)"),
    ("auroc", lambda y, s: _sweep(y, s, start=False), "does not start at (0, 0)"),
    ("auroc", lambda y, s: _one_sample_at_a_time(y, s), "tied scores"),
    ("aupro", lambda m, a, lim=0.3: solutions.aupro(m, a, lim) * lim, "Divide the area by the FPR limit"),
    ("aupro", lambda m, a, lim=0.3: solutions.aupro(m, a, 1.0), "whole FPR range"),
    ("aupro", _aupro_regions(structure=None), "4-connectivity"),
    ("aupro", _aupro_regions(stack=True), "Label each image's mask separately"),
    ("aupro", lambda m, a, lim=0.3: solutions.aupro(m, -a, lim), "Are scores higher for anomalies"),
    ("aupro", lambda m, a, lim=0.3: solutions.aupro(m, a, 0.3), "ignore the fpr_limit"),
]


# ----------------------------------------------------------------------------- the checks
@pytest.mark.parametrize("name", list(CHECKS))
def test_check_passes_the_reference_solution(name, capsys):
    assert CHECKS[name](solutions.SOLUTIONS[name]) is True
    out = capsys.readouterr().out
    assert out.startswith(f"✓ {name}:") and "✗" not in out
    assert CHECKS[name](solutions.SOLUTIONS[name], strict=True) is True


@pytest.mark.parametrize("name, wrong, words", WRONG, ids=[f"{n}-{i}" for i, (n, *_) in enumerate(WRONG)])
def test_check_explains_a_typical_mistake(name, wrong, words, capsys):
    assert CHECKS[name](wrong) is False                          # default: explain and go on
    out = capsys.readouterr().out
    assert out.startswith(f"✗ {name}:") and words in out, out
    assert "Traceback" not in out
    with pytest.raises(labs.LabCheckError, match=r"^" + name) as err:  # strict: the same explanation, raised
        CHECKS[name](wrong, strict=True)
    assert words in str(err.value)


@pytest.mark.parametrize("name", list(CHECKS))
def test_a_stub_says_not_implemented_yet_and_strict_mode_raises(name, capsys, monkeypatch):
    def stub(*args):
        # TODO
        raise NotImplementedError

    assert CHECKS[name](stub) is False
    out = capsys.readouterr().out
    assert "not implemented yet: fill in the TODO cell above" in out and "Traceback" not in out
    monkeypatch.setenv(labs.STRICT_ENV, "1")
    with pytest.raises(labs.LabCheckError, match="not implemented yet"):
        CHECKS[name](stub)
    assert CHECKS[name](stub, strict=False) is False  # the argument wins over the environment


def test_student_errors_and_misuse_are_explained_not_raised(capsys):
    def broken(height, width, k):
        return torch.zeros(height * width, height * width, dtype=torch.bool)[height * width * 2]

    assert labs.check_neighbor_mask(broken) is False
    assert "raised IndexError: index" in capsys.readouterr().out
    assert labs.check_auroc(lambda y, s: None) is False
    assert "forget the `return`" in capsys.readouterr().out
    assert labs.check_image_score(torch.zeros(3)) is False           # a value instead of the function
    assert "pass the function itself" in capsys.readouterr().out


def test_a_jitter_with_one_coin_per_token_passes_with_a_note(capsys):
    def per_token(tokens, scale, prob):
        noise = torch.randn_like(tokens) * scale * tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1]
        return tokens + noise * (torch.rand(tokens.shape[:-1] + (1,)) < prob)

    assert labs.check_feature_jitter(per_token) is True
    assert "one coin per token" in capsys.readouterr().out


def test_an_aupro_on_a_threshold_grid_passes_within_the_tolerance(capsys):
    def grid(masks, maps, fpr_limit=0.3):
        fpr, pro = [0.0], [0.0]
        labelled = [ndimage.label(m, structure=np.ones((3, 3))) for m in masks]
        for t in np.linspace(maps.max(), maps.min(), 300):
            fpr.append(((maps >= t) & ~masks).sum() / (~masks).sum())
            pro.append(np.mean([((maps[i] >= t) & (lab == r)).sum() / (lab == r).sum()
                                for i, (lab, n) in enumerate(labelled) for r in range(1, n + 1)]))
        return _cut_area(fpr, pro, fpr_limit)

    assert labs.check_aupro(grid) is True
    assert "within 0.01" in capsys.readouterr().out


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    labs.check_feature_jitter(solutions.feature_jitter)
    assert torch.equal(torch.rand(3), expected)


def test_toy_maps_and_the_local_branch_example_are_well_formed():
    toy = labs.toy_anomaly_maps()
    assert toy["maps"].shape == toy["masks"].shape == (24, 64, 64) and toy["labels"].shape == (24,)
    assert all(toy["masks"][i].any() == bool(toy["labels"][i]) for i in range(24))
    x, params = labs.local_branch_example()
    assert x.shape == (2, 6, 7, 8) and set(params) == set(labs.LOCAL_BRANCH_PARAMS)


# ----------------------------------------------------------------------------- the lab notebooks
def _todo_cells(nb):
    return [c for c in nb.cells if "todo" in c.metadata.get("tags", [])]


def test_there_are_labs_and_the_readme_lists_each():
    assert len(LAB_PATHS) >= 2, "no lab notebooks in notebooks/labs"
    readme = (LABS / "README.md").read_text()
    for path in LAB_PATHS:
        assert path.name in readme, f"{path.name} is missing from notebooks/labs/README.md"
    covered = {c.metadata["adnotes"]["solution"] for p in LAB_PATHS for c in _todo_cells(nbformat.read(p, 4))}
    assert covered == set(CHECKS), "every check has a TODO cell in some lab"


@pytest.mark.parametrize("path", LAB_PATHS, ids=lambda p: p.stem)
def test_lab_is_committed_without_outputs_and_follows_the_layout(path):
    nb = nbformat.read(path, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    for i in code:
        assert nb.cells[i].outputs == [] and nb.cells[i].execution_count is None, f"{path.name}: clear the outputs"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# Lab ") and "quick" in first.source.lower()
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "QUICK" in params[0].source
    assert any("adnotes.setup(" in nb.cells[i].source for i in code)
    assert sum(nb.cells[i - 1].cell_type == "markdown" for i in code) >= 0.6 * len(code)
    assert nb.cells[-1].cell_type == "markdown" and "Summary" in nb.cells[-1].source
    assert nb.metadata["adnotes"]["lab"] is True
    for cell in _todo_cells(nb):
        name = cell.metadata["adnotes"]["solution"]
        assert name in CHECKS and "# TODO" in cell.source and "raise NotImplementedError" in cell.source
        assert f"def {name}(" in cell.source
        after = nb.cells[nb.cells.index(cell) + 1:]
        check = next(c for c in after if c.cell_type == "code")
        assert f"labs.check_{name}({name})" in check.source, f"the check of {name} follows its TODO cell"


def _execute(path, monkeypatch, solved: bool):
    """Run a lab in a fresh kernel (cwd = its folder, quick mode); optionally with the solutions pasted in."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    todo = _todo_cells(nb)
    if solved:
        for cell in todo:
            solution = solutions.SOLUTIONS[cell.metadata["adnotes"]["solution"]]
            cell.source = solutions.IMPORTS + inspect.getsource(solution)
    monkeypatch.setenv("ADNOTES_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    text = "".join(out.get("text", "") for c in nb.cells if c.cell_type == "code" for out in c.outputs
                   if out.output_type == "stream")
    errors = [out for c in nb.cells if c.cell_type == "code" for out in c.outputs if out.output_type == "error"]
    return text, len(todo), errors


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", LAB_PATHS, ids=lambda p: p.stem)
def test_lab_runs_as_shipped_and_says_not_implemented(path, monkeypatch):
    text, n_todo, errors = _execute(path, monkeypatch, solved=False)
    assert not errors
    assert text.count("not implemented yet: fill in the TODO cell above") == n_todo, text
    assert "✓" not in text and "(skipped until" in text


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", LAB_PATHS, ids=lambda p: p.stem)
def test_lab_runs_with_the_solutions_and_every_check_passes(path, monkeypatch):
    text, n_todo, errors = _execute(path, monkeypatch, solved=True)
    assert not errors
    assert text.count("✓ ") == n_todo and "✗" not in text and "(skipped until" not in text, text
