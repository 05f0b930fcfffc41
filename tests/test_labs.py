"""The course labs: the self-checks of adnotes.labs and the layout of the nbgrader sources.

Each check passes the reference solution (tests/lab_solutions.py reads it from the lab's nbgrader
source, where it is written independently of the package code) and fails typical wrong solutions
with the explanation that names the mistake: returning False in the default mode, raising
LabCheckError in strict mode. The sources follow one layout: an answer cell per function, then a
graded cell whose visible half is the self-check and whose hidden half asserts it, then hidden
tests. tests/test_nbgrader.py generates the student versions and autogrades both ways.
"""
import copy
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import lab_solutions as solutions
from adnotes import labs

SOURCES = solutions.SOURCES
LABS = SOURCES[0].parents[2] if SOURCES else None
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


def _decoder(design="a", query="every", chain=True, residual="query", ffn=True, mask=True, expand=True):
    """A layer-wise query decoder with one slip (design "b": E and P swapped)."""
    def query_decoder(enc, queries, layers, pos, m):
        prev = enc
        for i, layer in enumerate(layers):
            q = queries[0] if query == "shared" else queries[i]
            q = q.expand(len(enc), -1, -1) if expand else q
            q = prev if query == "first" and i > 0 else q
            e, p = enc, prev if chain else enc
            kv1, kv2 = (e, p) if design == "a" else (p, e)
            m_ = m if mask else None
            r = layer.norm1(q if residual == "query" else kv1, layer.attn1(q, kv1, pos, m_))
            out = layer.norm2(r if residual == "query" else kv2, layer.attn2(r, kv2, pos, m_))
            prev = layer.norm3(out, layer.ffn(out)) if ffn else out
        return prev
    return query_decoder


def _f1_one_at_a_time(labels, scores):
    y = np.asarray(labels)[np.argsort(-np.asarray(scores), kind="stable")] != 0
    tp, fp = np.cumsum(y), np.cumsum(~y)
    return float(np.max(2 * tp / (tp + fp + y.sum())))


def _f1_curve(labels, scores, predicted=np.greater_equal):
    y, s = np.asarray(labels) != 0, np.asarray(scores, float)
    f1 = []
    for t in np.unique(s)[::-1]:
        tp, n = (predicted(s, t) & y).sum(), predicted(s, t).sum()
        precision, recall = tp / n if n else np.nan, tp / y.sum()
        f1.append(2 * precision * recall / (precision + recall) if tp else (np.nan if not n else 0.0))
    return np.array(f1)


def _configs(*, deep=True, share=False, seeds_as=list, validate=True, merge=True, set_seeds=True):
    """ablation_configs with one slip."""
    def ablation_configs(base, change, seeds):
        if validate and (len(list(seeds)) < 3 or len(set(seeds)) != len(list(seeds))):
            raise ValueError("need 3 distinct seeds")
        default = copy.deepcopy(base) if deep else base
        if set_seeds:
            default.train.seeds = seeds_as(seeds)
        ablated = copy.copy(default) if share else copy.deepcopy(default)
        if share:
            ablated.model.args.update(change)
        else:
            ablated.model.args = {**ablated.model.args, **change} if merge else dict(change)
        return default, ablated
    return ablation_configs


def _scores(key=int, row="mean", metric=None, number=False):
    """seed_scores with one slip: folder names as keys, seeds numbered 0..n-1, the first row, a fixed metric."""
    def seed_scores(run_dir, metric_=metric or "image_AUROC"):
        paths = sorted(Path(run_dir).glob("seed*/metrics.json"), key=lambda p: int(p.parent.name[4:]))
        out = {}
        for i, path in enumerate(paths):
            table = json.loads(path.read_text())
            value = table["mean"] if row == "mean" else next(iter(table.values()))
            seed = i if number else key(path.parent.name[4:]) if key is int else path.parent.name
            out[seed] = value[metric or metric_]
        return out
    return seed_scores


def _transplant(inplace=False, corner=False, swap=False, grow=0, validate=True, dtype=torch.bool, invert=False):
    """transplant with one slip."""
    def transplant(x, donor, top, left, block):
        C, H, W = x.shape
        if validate and (top < 0 or left < 0 or top + block > H or left + block > W):
            raise ValueError("does not fit")
        (r, c), b = ((left, top) if swap else (top, left)), block + grow
        new = x if inplace else x.clone()
        new[:, r:r + b, c:c + b] = donor[:, :b, :b] if corner else donor[:, r:r + b, c:c + b]
        region = torch.zeros(H, W, dtype=torch.bool)
        region[r:r + b, c:c + b] = True
        return new, (~region if invert else region).to(dtype)
    return transplant


def _copy_gain(pool="all", mask=True, sign=1, sizes=False, leak_inside=False):
    """copy_gain with one slip: ratios per image or per token, the region ignored, δ's sign, sizes, the leak."""
    def copy_gain(out, out_new, x, x_new, region):
        d_out, delta = (out_new - out).double(), sign * (x_new - x).double()
        inside = region.unsqueeze(1) if mask else torch.ones_like(region.unsqueeze(1))
        along = ((d_out.square() if sizes else d_out * delta) * inside).sum((1, 2, 3))
        energy = (delta.square() * inside).sum((1, 2, 3))
        spread = (d_out.square() * (torch.ones_like(inside) if leak_inside else ~region.unsqueeze(1))).sum((1, 2, 3))
        if pool == "image":
            return (along / energy).mean().item(), (spread / energy).mean().item()
        if pool == "token":
            ratio = (d_out * delta).sum(1)[region] / delta.square().sum(1)[region]
            return ratio.mean().item(), (spread.sum() / energy.sum()).item()
        return (along.sum() / energy.sum()).item(), (spread.sum() / energy.sum()).item()
    return copy_gain


class _Skip(torch.nn.Module):
    def __init__(self, channels, width):
        super().__init__()
        self.inner = solutions.bottleneck(channels, width)

    def forward(self, x):
        return x + self.inner(x)


_SHARED = solutions.bottleneck(12, 3)


def _train(seeded=True, use_seed=True, use_lr=True, use_batch=True, step=True):
    """train_reconstructor with one slip: unseeded batches, the seed or lr or batch ignored, no optimizer step."""
    def train_reconstructor(model, features, steps, seed, lr=1e-3, batch=2):
        generator = torch.Generator().manual_seed(seed if use_seed else 0) if seeded else None
        optimizer = torch.optim.Adam(model.parameters(), lr=lr if use_lr else 1e-2)
        for _ in range(steps):
            x = features[torch.randint(len(features), (batch if use_batch else 2,), generator=generator)].float()
            loss = (model(x) - x).square().mean()
            optimizer.zero_grad()
            loss.backward()
            if step:
                optimizer.step()
        return model
    return train_reconstructor


def _width_sweep(seeded=True, own_probe=False, measure_before=False, row="mean", scale=1.0, one_model=False,
                 trained=True):
    """width_sweep with one slip (built from the lab's own solutions)."""
    from adnotes.copying import transplant_probe
    from adnotes.evaluation import evaluate_maps
    from adnotes.train import anomaly_maps

    def width_sweep(widths, train, test, probe, steps, seed):
        if own_probe:
            probe = transplant_probe(test, n=6, block=2, seed=seed + 1)
        normal = train.features[train.labels == 0].float()
        sweep, model = {}, None
        for d in widths:
            if seeded:
                torch.manual_seed(seed)
            model = model if one_model and model is not None else solutions.bottleneck(train.channels, d)
            with torch.no_grad():
                before = solutions.copy_gain(model(probe.x), model(probe.x_new), probe.x, probe.x_new, probe.region)
            if trained:
                model = solutions.train_reconstructor(model, normal, steps, seed)
            with torch.no_grad():
                after = solutions.copy_gain(model(probe.x), model(probe.x_new), probe.x, probe.x_new, probe.region)
            gain, leak = before if measure_before else after
            table = evaluate_maps(anomaly_maps(model, test), test, pixel=False, aupro=False, progress=False)
            auroc = table["image_AUROC"].iloc[0] if row == "first" else table.loc["mean", "image_AUROC"]
            sweep[d] = {"model": model, "gain": gain, "leak": leak, "image_AUROC": scale * auroc}
        return sweep
    return width_sweep


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
    ("query_decoder", _decoder(design="b"), "design (b)"),
    ("query_decoder", _decoder(query="shared"), "every layer used queries[0]"),
    ("query_decoder", _decoder(query="first"), "only your first layer used a query table"),
    ("query_decoder", _decoder(chain=False), "P, the previous layer's output"),
    ("query_decoder", _decoder(residual="kv"), "must follow its QUERY"),
    ("query_decoder", _decoder(ffn=False), "feed-forward step is missing"),
    ("query_decoder", _decoder(mask=False), "you passed None as mask"),
    ("query_decoder", _decoder(expand=False), "expand it to the batch"),
    ("query_decoder", lambda *a: torch.stack([solutions.query_decoder(*a)] * 2), "return only the last one"),
    ("f1_max", lambda y, s: 100 * solutions.f1_max(y, s), "not a percentage"),
    ("f1_max", _f1_one_at_a_time, "one threshold per DISTINCT score"),
    ("f1_max", lambda y, s: max(((s >= t) == (y == 1)).mean() for t in np.unique(s)), "best ACCURACY"),
    ("f1_max", lambda y, s: 2 * ((s >= 0.5) & (y == 1)).sum() / ((s >= 0.5).sum() + y.sum()), "single threshold 0.5"),
    ("f1_max", lambda y, s: float(np.nanmean(_f1_curve(y, s))), "the MAXIMUM"),
    ("f1_max", lambda y, s: float(np.max(_f1_curve(y, s, predicted=np.greater))), "not finite"),
    ("ablation_configs", _configs(deep=False), "changed `base`"),
    ("ablation_configs", _configs(share=True), "copy.copy copies only the top level"),
    ("ablation_configs", _configs(seeds_as=tuple), "store a list"),
    ("ablation_configs", _configs(set_seeds=False), "exactly the seeds given"),
    ("ablation_configs", _configs(merge=False), "lost its other entries"),
    ("ablation_configs", _configs(validate=False), "raise ValueError"),
    ("seed_scores", _scores(key=str), "key the dict by the integer seed"),
    ("seed_scores", _scores(number=True), "numbered the seeds 0, 1, 2 yourself"),
    ("seed_scores", _scores(row="first"), "first class's row"),
    ("seed_scores", _scores(metric="image_AUROC"), "use the `metric` argument"),
    ("seed_scores", lambda run, metric="image_AUROC": float(np.mean(list(solutions.seed_scores(run, metric).values()))),
     "one value per seed"),
    ("mean_std", lambda v: (np.mean(v), np.std(v)), "divides by n"),
    ("mean_std", lambda v: (np.mean(v), np.var(v, ddof=1)), "variance"),
    ("mean_std", lambda v: (np.mean(v), np.std(v, ddof=1) / np.sqrt(len(v))), "standard error"),
    ("mean_std", lambda v: (np.std(v, ddof=1), np.mean(v)), "(std, mean)"),
    ("mean_std", lambda v: (np.mean(v), np.std(v, ddof=1)), "raise ValueError"),
    ("paired_differences", lambda d, a: {k: d[k] - a[k] for k in d}, "default − ablated"),
    ("paired_differences", lambda d, a: dict(zip(d, (y - x for x, y in zip(d.values(), a.values())))),
     "by position"),
    ("paired_differences", lambda d, a: {k: a[k] - d[k] for k in d if k in a}, "raise ValueError"),
    ("transplant", _transplant(inplace=True), "you changed x itself"),
    ("transplant", _transplant(corner=True), "the donor's top-left corner"),
    ("transplant", _transplant(swap=True), "rows and columns are swapped"),
    ("transplant", _transplant(grow=1), "block² = 4"),
    ("transplant", _transplant(validate=False), "Raise ValueError: slicing silently cuts such a block short"),
    ("transplant", _transplant(dtype=torch.float32), "return a torch.bool mask"),
    ("transplant", _transplant(invert=True), "True OUTSIDE the block"),
    ("copy_gain", _copy_gain(pool="image"), "you averaged one ratio per image"),
    ("copy_gain", _copy_gain(pool="token"), "you averaged per-token ratios"),
    ("copy_gain", _copy_gain(mask=False), "not only over the region R"),
    ("copy_gain", _copy_gain(sign=-1), "g = −1"),
    ("copy_gain", _copy_gain(sizes=True), "compared sizes"),
    ("copy_gain", _copy_gain(leak_inside=True), "OUTSIDE the region"),
    ("copy_gain", lambda *a: solutions.copy_gain(*a)[::-1], "you return (leak, gain)"),
    ("bottleneck", lambda c, w: torch.nn.Sequential(torch.nn.Conv2d(c, w, 3, padding=1), torch.nn.GELU(),
                                                    torch.nn.Conv2d(w, c, 1)), "mixes neighbouring tokens"),
    ("bottleneck", _Skip, "a skip connection"),
    ("bottleneck", lambda c, w: solutions.bottleneck(c, c), "more than its width"),
    ("bottleneck", lambda c, w: _SHARED, "two calls returned the same model"),
    ("bottleneck", lambda c, w: torch.nn.Sequential, "returned a class"),
    ("train_reconstructor", _train(seeded=False), "not reproducible"),
    ("train_reconstructor", _train(use_seed=False), "the `seed` argument is ignored"),
    ("train_reconstructor", _train(use_lr=False), "the `lr` argument is ignored"),
    ("train_reconstructor", _train(use_batch=False), "each step takes `batch` = 4 images"),
    ("train_reconstructor", _train(step=False), "the reconstruction error did not fall"),
    ("train_reconstructor", lambda model, features, steps, seed, lr=1e-3, batch=2: model, "0 forward passes"),
    ("width_sweep", _width_sweep(seeded=False), "not reproducible"),
    ("width_sweep", _width_sweep(own_probe=True), "on the probe you"),
    ("width_sweep", _width_sweep(measure_before=True), "after training"),
    ("width_sweep", _width_sweep(row="first"), "the image AUROC of one class"),
    ("width_sweep", _width_sweep(scale=100.0), "not a percentage"),
    ("width_sweep", _width_sweep(one_model=True), "every width got the same model object"),
    ("width_sweep", _width_sweep(trained=False), "steps=2 and steps=40"),
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


def test_the_examples_and_the_fake_run_are_well_formed(tmp_path):
    toy = labs.toy_anomaly_maps()
    assert toy["maps"].shape == toy["masks"].shape == (24, 64, 64) and toy["labels"].shape == (24,)
    assert all(toy["masks"][i].any() == bool(toy["labels"][i]) for i in range(24))
    x, params = labs.local_branch_example()
    assert x.shape == (2, 6, 7, 8) and set(params) == set(labs.LOCAL_BRANCH_PARAMS)
    enc, queries, layers, pos, mask = labs.query_decoder_example()
    assert enc.shape == (2, 20, 16) and queries.shape == (2, 20, 16) and len(layers) == 2
    assert pos.shape == (20, 16) and mask.shape == (20, 20) and mask.dtype == torch.bool
    run = labs.fake_run(tmp_path / "run", {0: 0.5, 12: 0.75}, metric="pixel_AUROC")
    tables = {int(p.parent.name[4:]): json.loads(p.read_text()) for p in run.glob("seed*/metrics.json")}
    assert {seed: t["mean"]["pixel_AUROC"] for seed, t in tables.items()} == {0: 0.5, 12: 0.75}


def test_a_warning_of_the_students_code_goes_to_stdout_not_stderr(capsys):
    def noisy(values):
        import warnings
        warnings.warn("deprecated call", DeprecationWarning)
        return solutions.mean_std(values)

    assert labs.check_mean_std(noisy) is True
    captured = capsys.readouterr()
    assert "DeprecationWarning: deprecated call" in captured.out and captured.err == ""


# ----------------------------------------------------------------------------- the nbgrader sources
def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def test_there_are_labs_and_the_readme_links_each():
    assert len(SOURCES) >= 3, "no lab sources in notebooks/labs/source/<lab>/<lab>.ipynb"
    readme = (LABS / "README.md").read_text()
    for path in SOURCES:
        assert path.stem == path.parent.name, f"{path}: name the notebook after its folder"
        assert f"(release/{path.stem}/{path.name})" in readme, f"{path.stem} is missing from notebooks/labs/README.md"
    public = {name.removeprefix("check_") for name in labs.__all__ if name.startswith("check_")}
    assert set(CHECKS) == public, "every check of adnotes.labs has an answer cell in some lab, and vice versa"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_source_follows_the_lab_layout(path):
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
    graded = [_nbgrader(c) for c in nb.cells if _nbgrader(c)]
    assert len({m["grade_id"] for m in graded}) == len(graded), "grade ids are unique"
    for cell in nb.cells:
        meta, name = _nbgrader(cell), cell.metadata.get("adnotes", {}).get("solution")
        if meta.get("grade") and not meta.get("solution"):   # an autograder test: the visible half never raises
            visible = cell.source.split("### BEGIN HIDDEN TESTS")[0]
            assert cell.cell_type == "code" and meta["locked"] and meta["points"] > 0, meta["grade_id"]
            assert "### END HIDDEN TESTS" in cell.source and "assert" not in visible and "strict" not in visible
        if meta.get("grade") and meta.get("solution"):       # a written answer, graded by hand
            assert cell.cell_type == "markdown" and meta["points"] > 0, meta["grade_id"]
        if meta.get("solution") and not meta.get("grade"):   # an autograded answer: nbgrader writes the stub
            assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source, meta["grade_id"]
            assert "NotImplementedError" not in cell.source, meta["grade_id"]
        if name:
            assert meta.get("solution") and not meta.get("grade") and f"def {name}(" in cell.source
            check = next(c for c in nb.cells[nb.cells.index(cell) + 1:] if c.cell_type == "code")
            assert f"labs.check_{name}({name})" in check.source and _nbgrader(check).get("grade"), \
                f"the graded self-check of {name} follows its answer cell"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_every_written_question_has_a_rubric_with_its_points(path):
    nb = nbformat.read(path, as_version=4)
    written = {_nbgrader(c)["grade_id"]: _nbgrader(c)["points"] for c in nb.cells
               if _nbgrader(c).get("grade") and _nbgrader(c).get("solution")}
    assert written, f"{path.name} has no written question"
    rubric = (LABS / "instructor" / f"{path.stem}.md").read_text()
    sections = {name: (int(points), body) for name, points, body in
                re.findall(r"^## (\S+) \((\d+) points?\)\n(.*?)(?=^## |\Z)", rubric, re.M | re.S)}
    assert set(sections) == set(written), f"instructor/{path.stem}.md: one section per written answer cell"
    for grade_id, points in written.items():
        criteria = [int(n) for n in re.findall(r"^- (\d+) points?:", sections[grade_id][1], re.M)]
        assert sections[grade_id][0] == points == sum(criteria), f"{grade_id}: the rubric's points"
