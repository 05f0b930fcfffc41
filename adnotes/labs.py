"""Self-checks for the course labs (``notebooks/labs/``): a student writes one function in a TODO
cell, and the next cell checks it on small fixed inputs against a reference, saying in words what
is wrong.

    from adnotes import labs
    labs.check_neighbor_mask(neighbor_mask)   # prints "✓ ..." or "✗ ..." with the reason; True/False

The contract of every ``check_<name>(fn, *, strict=None)``:

- it calls ``fn`` on small inputs with fixed seeds (the global random state is restored afterwards)
  and compares with the reference: the package's own implementation, scikit-learn for AUROC, the
  ``statistics`` module for the mean and standard deviation;
- on success it prints ``✓ <name>: ...`` and returns True;
- on failure it prints ``✗ <name>: <what is wrong, in terms of the method>`` and returns False, so
  the notebook goes on. A stub that still raises ``NotImplementedError`` gets "not implemented
  yet: fill in the TODO cell above"; any other exception is reported by type and message with a
  hint, never as a traceback;
- strict mode (``strict=True``, or the environment variable ``ADNOTES_LABS_STRICT=1`` when
  ``strict`` is None) raises :class:`LabCheckError` with the same explanation instead of
  returning False (for tests and autograders).

Checks (the labs' functions and their signatures):

    lab 1  check_neighbor_mask       neighbor_mask(height, width, k) -> (H·W, H·W) bool, True = blocked
                                     (UniAD §3.2, Fig. 5)
           check_feature_jitter      feature_jitter(tokens (B, N, C), scale, prob) -> (B, N, C)   (UniAD Eq. 3)
           check_query_decoder       query_decoder(enc (B, N, C), queries (L, N, C), layers, pos, mask)
                                     -> (B, N, C)   (UniAD's layer-wise query decoder, §3.2)
           check_local_branch        local_branch(x (B, H, W, C), params) -> (B, H, W, C)   (Omni-block)
    lab 2  check_image_score         image_score(maps (B, H, W), pool=16) -> (B,)   (max of the pooled map)
           check_auroc               auroc(labels (N,), scores (N,)) -> float        (ROC from a threshold sweep)
           check_aupro               aupro(masks (N, H, W), maps (N, H, W), fpr_limit=0.3) -> float
           check_f1_max              f1_max(labels (N,), scores (N,)) -> float       (best F1 over the thresholds)
    lab 3  check_ablation_configs    ablation_configs(base Config, change dict, seeds) -> (default, ablated)
           check_seed_scores         seed_scores(run_dir, metric="image_AUROC") -> {seed: score}
           check_mean_std            mean_std(values) -> (mean, sample std)
           check_paired_differences  paired_differences(default {seed: score}, ablated) -> {seed: difference}
    lab 4  check_transplant          transplant(x (C, H, W), donor, top, left, block) -> (x_new, region (H, W) bool)
           check_copy_gain           copy_gain(out, out_new, x, x_new (N, C, H, W), region (N, H, W)) -> (gain, leak)
                                     (the copy gain of adnotes.copying, pooled over images)
           check_bottleneck          bottleneck(channels, width) -> a per-token nn.Module (N, C, H, W) -> (N, C, H, W)
           check_train_reconstructor train_reconstructor(model, features (N, C, H, W), steps, seed, lr, batch) -> model
           check_width_sweep         width_sweep(widths, train, test, probe, steps, seed)
                                     -> {width: {"model", "gain", "leak", "image_AUROC"}}

Helpers for trying a function before checking it: :func:`query_decoder_example` (a tiny UniAD's
decoder inputs), :func:`local_branch_example` (an input and the weight dict),
:func:`toy_anomaly_maps` (a small set of maps, masks and labels), :func:`fake_run` (a run
folder with given per-seed scores) and :func:`tiny_splits` (a tiny train and test split of features).

In the nbgrader labs (``notebooks/labs/source/``) each check is the visible half of an autograder
test cell; hidden tests follow it. A check never writes to stderr (warnings of the student's code
are reported on stdout): nbgrader scores a test cell with any stderr output as failed.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LabCheckError", "check_neighbor_mask", "check_feature_jitter", "check_query_decoder",
           "check_local_branch", "check_image_score", "check_auroc", "check_aupro", "check_f1_max",
           "check_ablation_configs", "check_seed_scores", "check_mean_std", "check_paired_differences",
           "check_transplant", "check_copy_gain", "check_bottleneck", "check_train_reconstructor", "check_width_sweep",
           "query_decoder_example", "local_branch_example", "toy_anomaly_maps", "fake_run", "tiny_splits",
           "LOCAL_BRANCH_PARAMS",
           "STRICT_ENV"]

STRICT_ENV = "ADNOTES_LABS_STRICT"


class LabCheckError(AssertionError):
    """A lab check failed (strict mode); the message says what is wrong."""


class _Wrong(Exception):
    """Internal: the student's answer is wrong; the message is the explanation."""

def _must_refuse(call, wrong: str, returned: str) -> None:
    """Run a student's ``call`` that must raise ValueError: anything else it raises is ``wrong`` (plus what
    was raised), a result is ``returned``; an unfinished TODO says so."""
    try:
        call()
    except ValueError:
        return
    except NotImplementedError:
        raise _NotDone from None
    except Exception as err:
        raise _Wrong(f"{wrong} (got {type(err).__name__}: {err}).") from None
    raise _Wrong(returned)



class _NotDone(Exception):
    """Internal: the student's function still raises NotImplementedError."""


def _strict(strict: bool | None) -> bool:
    if strict is not None:
        return bool(strict)
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


def _run_check(name: str, fn, body: Callable[[Callable], str], strict: bool | None) -> bool:
    """Run one check: print ✓/✗ with the explanation; return the verdict or raise in strict mode."""
    if not callable(fn):
        message = (f"pass the function itself, e.g. check_{name}({name}), not a {type(fn).__name__} "
                   f"(a value, such as the result of calling it).")
    else:
        caught: list = []
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                note = body(fn)
            print(f"✓ {name}: {_indent(note + _warned(caught))}")
            return True
        except _NotDone:
            message = ("not implemented yet: fill in the TODO cell above (replace `raise NotImplementedError` "
                       "with your code), run it, then run this check again.")
        except _Wrong as wrong:
            message = str(wrong) + _warned(caught)
    print(f"✗ {name}: {_indent(message)}")
    if _strict(strict):
        raise LabCheckError(f"{name}: {message}")
    return False


def _warned(caught: list) -> str:
    """The warnings raised during a check, as a note for stdout: an autograder (nbgrader) scores a test
    cell that writes anything to stderr as failed, so a correct function that warns must not."""
    texts = sorted({f"{w.category.__name__}: {str(w.message).strip().splitlines()[0]}" for w in caught})
    return f"\n(warnings during the check: {'; '.join(texts[:3])})" if texts else ""


def _call(fn: Callable, *args, what: str, hint: str | Callable[[str], str] = ""):
    """Call the student's function; turn its exceptions into explanations (``hint``: a text, or a
    function of the error message that returns one)."""
    try:
        out = fn(*args)
    except NotImplementedError:
        raise _NotDone from None
    except Exception as err:  # any error of the student's code: explain, do not crash the notebook
        text = str(err).strip().splitlines()[0] if str(err).strip() else "(no message)"
        hint = hint(text) if callable(hint) else hint
        raise _Wrong(f"calling {what} raised {type(err).__name__}: {text}" + (f"\n{hint}" if hint else "")) from None
    if out is None:
        raise _Wrong(f"{what} returned None: did you forget the `return` at the end of your function?")
    return out


def _as_tensor(out, what: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.detach().cpu()
    if isinstance(out, (np.ndarray, list, tuple)):
        try:
            return torch.as_tensor(np.asarray(out))
        except (TypeError, ValueError):
            pass
    raise _Wrong(f"{what} returned a {type(out).__name__}; return a torch tensor (or numpy array).")


def _as_float(out, what: str) -> float:
    if isinstance(out, (torch.Tensor, np.ndarray)):
        if np.prod(out.shape, dtype=int) == 1:
            return float(out.item())
        raise _Wrong(f"{what} returned an array of shape {tuple(out.shape)}; return one number, the area "
                     f"under the curve (a float).")
    try:
        return float(out)
    except (TypeError, ValueError):
        raise _Wrong(f"{what} returned a {type(out).__name__}; return one float.") from None


def _cells(n: int) -> str:
    return f"{n} cell" if n == 1 else f"{n} cells"


def _shape(t) -> str:
    return "(" + ", ".join(str(s) for s in t) + ")"


# ============================================================================ 1. neighbour mask
def _window(height: int, width: int, rule: Callable, order: str = "row") -> torch.Tensor:
    """(HW, HW) bool from rule(drow, dcol) on every (query, key) pair; tokens row- or column-major."""
    t = torch.arange(height * width)
    if order == "row":
        rows, cols = t // width, t % width
    else:  # column-major numbering: token t is cell (t % H, t // H)
        rows, cols = t % height, t // height
    return rule(rows[:, None] - rows[None, :], cols[:, None] - cols[None, :])


def _mask_picture(mask_row: torch.Tensor, height: int, width: int, query: int) -> list[str]:
    """One query's row of a mask as text lines: # blocked, . visible, Q/q the query cell (blocked/visible)."""
    lines = []
    for i in range(height):
        chars = []
        for j in range(width):
            t, blocked = i * width + j, bool(mask_row[i * width + j])
            chars.append(("Q" if blocked else "q") if t == query else ("#" if blocked else "."))
        lines.append("".join(chars))
    return lines


def _diagnose_mask(mask: torch.Tensor, ref: torch.Tensor, h: int, w: int, k: int) -> str:
    """What kind of wrong mask is this (mask and ref are (HW, HW) bool and differ)."""
    r = k // 2
    n = h * w
    if torch.equal(mask, ~ref):
        return ("True must mean blocked (PyTorch's convention for a bool attn_mask of nn.MultiheadAttention): "
                "your mask is the complement, True where attention is allowed. Return ~your_mask.")
    eye = torch.eye(n, dtype=torch.bool)
    if torch.equal(mask, ref & ~eye):
        return ("your mask lets a token attend to itself: the centre of the neighbourhood must be masked too "
                "(every diagonal entry mask[t, t] must be True). Copying itself is the easiest shortcut of all.")
    square = lambda rad: (lambda di, dj: (di.abs() <= rad) & (dj.abs() <= rad))  # noqa: E731
    for rad in range(0, max(h, w) + 1):
        if rad != r and torch.equal(mask, _window(h, w, square(rad))):
            size = 2 * rad + 1
            if rad == k:
                return (f"your window is {size}×{size}: it reaches k = {_cells(k)} to each side, but k is the "
                        f"window's WIDTH. A k×k window reaches k // 2 = {_cells(r)} each side: "
                        f"|Δrow| ≤ k // 2 and |Δcol| ≤ k // 2.")
            if abs(rad - r) == 1:
                return (f"off by one: your window is {size}×{size}, the {k}×{k} window reaches k // 2 = "
                        f"{_cells(r)} each side (|Δrow| ≤ {r} and |Δcol| ≤ {r}: ≤, not <"
                        + (")." if rad < r else ", and not k // 2 + 1)."))
            return f"your window is {size}×{size}; the neighbourhood is k×k = {k}×{k} (k // 2 = {_cells(r)} each side)."
    if r > 0 and torch.equal(mask, _window(h, w, lambda di, dj: (di >= -r) & (di < r) & (dj >= -r) & (dj < r))):
        return (f"your window is not centred: it reaches {_cells(r)} up and left but only {r - 1} down and right. "
                f"range(i - k // 2, i + k // 2) stops one short; use range(i - k // 2, i + k // 2 + 1).")
    if r > 0 and torch.equal(mask, _window(h, w, lambda di, dj: (di <= r) & (di > -r) & (dj <= r) & (dj > -r))):
        return (f"your window is not centred: it reaches {_cells(r)} down and right but only {r - 1} up and left; "
                f"both sides go k // 2 = {_cells(r)}: |Δrow| ≤ {r} and |Δcol| ≤ {r}.")
    if torch.equal(mask, _window(h, w, square(r), order="column")):
        return (f"your tokens are numbered column by column. Tokens are numbered row-major, as x.flatten(2) "
                f"gives them: token t is grid cell (t // W, t % W) = (row, column), W = {w}.")
    flat = torch.arange(n)
    if torch.equal(mask, (flat[:, None] - flat[None, :]).abs() <= r):
        return (f"you used the distance of token NUMBERS, |t − s| ≤ {r}: a 1-D neighbourhood in the flattened "
                f"sequence. The neighbourhood is 2-D (Fig. 5): cells within {r} row(s) AND {r} column(s), "
                f"with row = t // W and column = t % W.")
    if torch.equal(mask, _window(h, w, lambda di, dj: (di.abs() <= r) | (dj.abs() <= r))):
        return (f"your mask blocks a cross (whole rows OR whole columns near the token): both conditions must "
                f"hold at once, |Δrow| ≤ {r} AND |Δcol| ≤ {r} (use &, not |).")
    if torch.equal(mask, _window(h, w, lambda di, dj: di.abs() + dj.abs() <= r)):
        return (f"your neighbourhood is a diamond, |Δrow| + |Δcol| ≤ {r}. The window is a k×k square: "
                f"|Δrow| ≤ {r} and |Δcol| ≤ {r} separately (the corners are blocked too).")
    if torch.equal(mask, _window(h, w, lambda di, dj: di ** 2 + dj ** 2 <= r * r)):
        return f"your neighbourhood is a disc, Δrow² + Δcol² ≤ {r}². The window is a k×k square, corners included."

    def wrap(d, size):
        return torch.minimum(d.abs(), size - d.abs())
    if torch.equal(mask, _window(h, w, lambda di, dj: (wrap(di, h) <= r) & (wrap(dj, w) <= r))):
        return ("your window wraps around the borders (a token on the left edge blocks keys on the right edge). "
                "At the borders the window is clipped: there are no neighbours beyond the edge.")
    if not mask.any():
        return "your mask blocks nothing (all False): every token still sees itself and its neighbours."
    if mask.all():
        return "your mask blocks everything (all True): a token would have no key left to attend to."
    query = int((mask != ref).any(dim=1).float().argmax())
    i, j = divmod(query, w)
    pictures = zip(_mask_picture(ref[query], h, w, query), _mask_picture(mask[query], h, w, query))
    rows = "\n".join(f"    {a}    {b}" for a, b in pictures)
    return (f"for query token {query} = cell ({i}, {j}) on a {h}×{w} grid with k = {k}, your row of the mask "
            f"differs (# blocked, . visible, Q/q the query cell blocked/visible):\n"
            f"    {'expected'.ljust(w)}    yours\n{rows}")


def _neighbor_mask_body(fn: Callable) -> str:
    from adnotes.models.uniad import neighbor_mask as reference

    cases = [(4, 6, 3), (5, 7, 5), (6, 5, 1)]
    for h, w, k in cases:
        what = f"neighbor_mask({h}, {w}, {k})"
        out = _as_tensor(_call(fn, h, w, k, what=what), what)
        n = h * w
        if tuple(out.shape) != (n, n):
            extra = ""
            if tuple(out.shape) == (h, w):
                extra = (" That is one H×W map; the mask has one row per QUERY token and one column per KEY "
                         "token.")
            elif tuple(out.shape) == (h, w, h, w):
                extra = " Reshape your (H, W, H, W) array to (H·W, H·W) (row-major: .reshape(H * W, H * W))."
            raise _Wrong(f"shape (H·W, H·W) = ({n}, {n}) expected for a {h}×{w} grid, got {_shape(out.shape)}.{extra}")
        if out.dtype != torch.bool:
            if out.is_floating_point() and torch.isinf(out).any():
                raise _Wrong("your mask is additive (0 = allowed, -inf = blocked). Here we want the bool form, "
                             "True = blocked: return `mask == float('-inf')`, or build it as bool directly.")
            raise _Wrong(f"return a torch.bool mask (True = blocked); yours is {out.dtype}. A float mask is ADDED "
                         f"to the attention scores, so a 1.0 would block nothing. Convert with .bool().")
        ref = reference(h, w, (k, k)).cpu()
        if not torch.equal(out, ref):
            raise _Wrong(f"on a {h}×{w} grid with k = {k}: " + _diagnose_mask(out, ref, h, w, k))
    names = ", ".join(f"{h}×{w} k={k}" for h, w, k in cases)
    return f"correct on {len(cases)} grids ({names}); identical to adnotes.models.uniad.neighbor_mask."


def check_neighbor_mask(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``neighbor_mask(height, width, k) -> (H·W, H·W) bool`` (True = blocked) against
    ``adnotes.models.uniad.neighbor_mask``: query token t = cell (t // W, t % W) may not see any key
    within k // 2 rows and k // 2 columns of it, itself included; the window is clipped at the borders."""
    return _run_check("neighbor_mask", fn, _neighbor_mask_body, strict)


# ============================================================================ 2. feature jitter
def _jitter_tokens(seed: int = 0) -> torch.Tensor:
    """(2, 48, 64) tokens whose norms span two decades and whose channels differ in scale."""
    g = torch.Generator().manual_seed(1000 + seed)  # not the seeds of the noise draws below
    base = torch.randn(2, 48, 64, generator=g)
    per_token = 10 ** (2 * torch.rand(2, 48, 1, generator=g) - 1)    # 0.1 .. 10
    per_channel = 10 ** (torch.rand(1, 1, 64, generator=g) - 0.5)    # 0.3 .. 3
    return base * per_token * per_channel


def _jitter_candidates(f: torch.Tensor, alpha: float) -> dict[str, tuple[torch.Tensor, str]]:
    """Standard deviations a jitter might have used, each with the explanation if it fits best."""
    c = f.shape[-1]
    norm = f.norm(dim=-1, keepdim=True)
    right = alpha * norm / c
    return {
        "right": (right, ""),
        "no_c": (alpha * norm, f"your noise is C = {c} times too large: Eq. 3's std is α·‖f‖₂ / C, divide by the "
                               f"number of channels C."),
        "sqrt_c": (alpha * norm / math.sqrt(c), f"your noise is √C = {math.sqrt(c):.0f} times too large: divide by C, "
                                                "not √C (‖f‖₂ / √C would be the RMS of the channels)."),
        "no_alpha": (norm / c, f"your noise is α = {alpha:g} times too small: multiply the std by the jitter "
                               "scale α (the `scale` argument)."),
        "variance": (right.sqrt(), "you used α·‖f‖₂ / C as the VARIANCE: Eq. 3 gives σ² = (α·‖f‖₂ / C)², so the "
                                   "std to multiply torch.randn by is σ = α·‖f‖₂ / C."),
        "squared": (right ** 2, "you multiplied torch.randn by σ² = (α·‖f‖₂ / C)²; multiply it by the standard "
                                "deviation σ = α·‖f‖₂ / C."),
        "sq_norm": (alpha * norm ** 2 / c, "you used the squared norm ‖f‖₂²; ‖f‖₂ is the Euclidean norm, the "
                                           "square root of the sum of squares (tokens.norm(dim=-1))."),
        "token_axis": (alpha * f.norm(dim=1, keepdim=True) / c,
                       "your norm runs over the wrong axis: ‖f‖₂ is the norm of ONE token's C channels, "
                       "tokens.norm(dim=-1, keepdim=True) on (B, N, C); you took it over the N tokens (dim=1)."),
        "batch_axis": (alpha * f.norm(dim=0, keepdim=True) / c,
                       "your norm runs over the batch (dim=0): ‖f‖₂ is the norm of one token's C channels, "
                       "tokens.norm(dim=-1, keepdim=True)."),
        "global": (alpha * f.norm() / c * torch.ones_like(norm),
                   "you used one norm for the whole tensor: Eq. 3 scales each token's noise by that token's own "
                   "norm, tokens.norm(dim=-1, keepdim=True) -> (B, N, 1)."),
    }


def _nll(noise: torch.Tensor, std: torch.Tensor) -> float:
    std = std.expand_as(noise).clamp_min(1e-12)
    return float((std.log() + 0.5 * (noise / std) ** 2).mean())


def _feature_jitter_body(fn: Callable) -> str:
    from adnotes.models.uniad import feature_jitter as reference

    alpha = 20.0
    f = _jitter_tokens()
    what = f"feature_jitter(tokens {_shape(f.shape)}, scale={alpha:g}, prob=1.0)"
    hint = "tokens is (B, N, C): B images, N tokens each, C channels per token."
    torch.manual_seed(0)
    clean = f.clone()
    out = _as_tensor(_call(fn, f, alpha, 1.0, what=what, hint=hint), what)
    if not torch.equal(f, clean):
        raise _Wrong("your function changed its input in place (tokens += noise, or .add_): return a new tensor "
                     "tokens + noise. The caller still needs the clean features: they are the reconstruction "
                     "target of the jittered input.")
    if tuple(out.shape) != tuple(f.shape):
        raise _Wrong(f"{what} must return jittered tokens of the input's shape {_shape(f.shape)}, got "
                     f"{_shape(out.shape)}. The noise D has one value per channel of every token.")
    if not out.is_floating_point():
        raise _Wrong(f"return float tokens, got {out.dtype}.")
    noise = out.double() - f.double()
    if not torch.isfinite(noise).all():
        raise _Wrong("your output contains NaN or inf; check the division by C and the norm.")
    if (noise.abs() <= 1e-12 * f.abs().double().max()).all():
        raise _Wrong("with prob p = 1 every call must add noise, but your function returned the tokens unchanged. "
                     "(If you wrote `if torch.rand(()) < p: return tokens`, the coin is inverted: skip the noise "
                     "when rand ≥ p.)")
    cands = {key: (std.double(), text) for key, (std, text) in _jitter_candidates(f.double(), alpha).items()}
    right = cands["right"][0]
    lean = (noise * f).sum(dim=-1) / (f.double() ** 2).sum(dim=-1)  # (B, N): ~0 for f + D, ~-1 for D alone
    if float(lean.median()) < -0.5:
        raise _Wrong("you return the noise D itself; Eq. 3 adds it to the feature: return tokens + D.")
    if (noise >= 0).float().mean() > 0.9:
        raise _Wrong("your noise is (almost) all positive: torch.rand draws uniform numbers in [0, 1). Eq. 3's "
                     "D is Gaussian with mean 0: torch.randn_like(tokens) * std.")
    scores = {key: _nll(noise, std) for key, (std, _) in cands.items()}
    const = noise.std()
    scores["constant"] = _nll(noise, const * torch.ones_like(right))
    best = min(scores, key=scores.get)
    ratio = float((noise.pow(2).mean(dim=-1).sqrt() / right.squeeze(-1)).median())
    if best == "constant":
        raise _Wrong("your noise has the same size for every token, whatever its norm. Eq. 3 scales the noise of "
                     "each token by that token's norm: std = α·‖f‖₂ / C, with ‖f‖₂ = tokens.norm(dim=-1, "
                     "keepdim=True).")
    if best != "right":
        raise _Wrong(cands[best][1] + f" (measured: your noise's std is {ratio:.3g}× α·‖f‖₂ / C, median over tokens)")
    z = noise / right
    if abs(float(z.mean())) > 0.1 or not 0.85 < float(z.std()) < 1.15:
        raise _Wrong(f"your noise, divided by α·‖f‖₂ / C, should be standard normal; it has mean "
                     f"{float(z.mean()):.3g} and std {float(z.std()):.3g}.")

    # the probability p: 0 never jitters, 0.25 jitters a quarter of the tokens (one coin per call, or per token)
    small = _jitter_tokens(1)[:, :8, :4].contiguous()
    for _ in range(3):
        what0 = "feature_jitter(tokens, scale=20, prob=0.0)"
        out0 = _as_tensor(_call(fn, small, alpha, 0.0, what=what0), what0)
        if tuple(out0.shape) != tuple(small.shape) or not torch.equal(out0, small):
            raise _Wrong("with prob p = 0 (jittering off, Tab. 5f) the tokens must come back unchanged, but yours "
                         "changed. The noise is added only with probability p.")
    torch.manual_seed(1)
    jittered = []
    for _ in range(200):
        o = _as_tensor(_call(fn, small, alpha, 0.25, what="feature_jitter(tokens, scale=20, prob=0.25)"), "jitter")
        jittered.append((o != small).any(dim=-1))  # (B, N): which tokens got noise
    jittered = torch.stack(jittered).float()  # (calls, B, N)
    rate = float(jittered.mean())
    if abs(rate - 0.75) < 0.1:
        raise _Wrong(f"with p = 0.25 you jittered {rate:.0%} of the tokens: the coin is inverted. Add the noise "
                     f"when torch.rand(()) < p (probability p), skip it otherwise.")
    if abs(rate - 0.25) > 0.1:
        raise _Wrong(f"with p = 0.25 you jittered {rate:.0%} of the tokens; the noise must be added with "
                     f"probability p = 25%.")
    calls = jittered.flatten(1)
    per_call = bool((calls.amin(dim=1) == calls.amax(dim=1)).all())  # every call: all tokens or none
    how = ("one coin per call, for the whole batch, as the official code does" if per_call else
           "one coin per token or image: also a fair reading of 'added with probability p' (the official code "
           "draws one coin per batch)")

    # the same draws as the package? (a bonus: different but correct draws are fine)
    torch.manual_seed(3)
    mine = _as_tensor(_call(fn, f, alpha, 1.0, what=what), what)
    torch.manual_seed(3)
    same = torch.allclose(mine, reference(f.clone(), alpha, 1.0), rtol=1e-5, atol=1e-6)
    draws = ("identical to adnotes.models.uniad.feature_jitter under the same seed" if same else
             "the same statistics as adnotes.models.uniad.feature_jitter, with other random draws (it calls "
             "torch.rand(()) for the coin, then torch.randn_like)")
    return (f"Eq. 3 holds: the noise has std α·‖f‖₂ / C per token (measured {ratio:.3f}× on tokens whose norms span "
            f"100×), mean 0; p = 0 leaves the tokens alone, p = 0.25 jitters {rate:.0%} ({how}); {draws}.")


def check_feature_jitter(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``feature_jitter(tokens, scale, prob)`` (UniAD Eq. 3): tokens (B, N, C) + D with
    D ~ N(0, (α·‖f‖₂ / C)²) per token, added with probability p. A random function: the check
    fits the noise's standard deviation (and names the formula it matches when it is not Eq. 3's),
    counts how often p = 0.25 jitters, and compares with ``adnotes.models.uniad.feature_jitter``."""
    return _run_check("feature_jitter", fn, _feature_jitter_body, strict)


# ============================================================================ 3. layer-wise query decoder
_DECODER = dict(in_channels=12, hidden_dim=16, num_heads=2, ffn_dim=32, num_encoder_layers=1, dropout=0.0,
                neighbor_size=3)  # a tiny UniAD: dropout off, so that the decoder is deterministic


def _decoder_case(batch: int, height: int, width: int, layers: int, seed: int):
    """A tiny UniAD's decoder inputs (enc, queries, layers, pos, mask) and its last layer's output."""
    from adnotes.models.uniad import UniAD, UniADConfig, neighbor_mask

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UniAD(UniADConfig(feature_size=(height, width), num_decoder_layers=layers, **_DECODER)).eval()
        x = torch.randn(batch, _DECODER["in_channels"], height, width)
    seen = {}
    hooks = [model.encoder[-1].register_forward_hook(lambda m, i, out: seen.setdefault("enc", out)),
             model.decoder[-1].register_forward_hook(lambda m, i, out: seen.setdefault("out", out))]
    with torch.no_grad():
        model(x)
        pos = model.pos_embed()                                   # (N, C)
    for hook in hooks:
        hook.remove()
    mask = neighbor_mask(height, width, (3, 3))                   # (N, N) bool, True = blocked
    return (seen["enc"], model.query_embed.detach(), list(model.decoder), pos, mask), seen["out"]


def query_decoder_example(batch: int = 2, height: int = 4, width: int = 5, layers: int = 2, seed: int = 0):
    """What ``query_decoder`` takes, from a tiny UniAD (C = 16, dropout off): ``enc`` (B, N, C) the
    encoder output, ``queries`` (L, N, C) one learned table per decoder layer, ``layers`` the L
    decoder layers, ``pos`` (N, C) the position embedding, ``mask`` (N, N) bool the neighbour mask;
    N = H·W = 20 tokens by default."""
    return _decoder_case(batch, height, width, layers, seed)[0]


def _decoder_variant(enc, queries, layers, pos, mask, *, design: str = "a", query: str = "every",
                     chain: bool = True, residual: str = "query", ffn: bool = True) -> torch.Tensor:
    """The decoder wired with switches for the usual mistakes (diagnostics only)."""
    from adnotes.models.uniad import LQD_DESIGNS

    q1, kv1, q2, kv2 = LQD_DESIGNS[design]
    prev = enc
    for i, layer in enumerate(layers):
        table = queries[0] if query == "shared" else queries[i]
        q = table.expand(len(enc), -1, -1) if query != "first" or i == 0 else prev
        x = {"Q": q, "E": enc, "P": prev if chain else enc}
        first = x[q1] if residual == "query" else x[kv1]
        x["R"] = layer.norm1(first, layer.attn1(x[q1], x[kv1], pos, mask))
        second = x[q2] if residual == "query" else x[kv2]
        out = layer.norm2(second, layer.attn2(x[q2], x[kv2], pos, mask))
        prev = layer.norm3(out, layer.ffn(out)) if ffn else out
    return prev


def _explain_decoder_error(message: str) -> str:
    if "batch" in message.lower() or "dim" in message.lower() or "size" in message.lower():
        return ("A query table is (N, C), one row per token; the attentions want (B, N, C): expand it to the "
                "batch with queries[i].expand(B, -1, -1), B = enc.shape[0].")
    return ("Each attention is called as layer.attn1(query, key_value, pos, mask) and returns the update; "
            "layer.norm1(x, update) is LayerNorm(x + update); layer.ffn(x) the feed-forward network.")


def _query_decoder_body(fn: Callable) -> str:
    from adnotes.models.uniad import LQD_DESIGNS

    cases = [(2, 4, 5, 2, 0), (1, 3, 6, 3, 1)]
    for b, h, w, n_layers, seed in cases:
        (enc, queries, layers, pos, mask), ref = _decoder_case(b, h, w, n_layers, seed)
        what = f"query_decoder(enc {_shape(enc.shape)}, queries {_shape(queries.shape)}, {n_layers} layers, pos, mask)"
        clean = enc.clone()
        out = _as_tensor(_call(fn, enc, queries, layers, pos, mask, what=what, hint=_explain_decoder_error), what)
        if not torch.equal(enc, clean):
            raise _Wrong("your function changed enc in place: every layer reads the same encoder output E.")
        if tuple(out.shape) != tuple(ref.shape):
            extra = (" You returned every layer's output: return only the last one." if out.ndim == 4 else "")
            raise _Wrong(f"shape (B, N, C) = {_shape(ref.shape)} expected (the last layer's output), got "
                         f"{_shape(out.shape)}.{extra}")
        if torch.allclose(out, ref, rtol=1e-4, atol=1e-5):
            continue
        where = f"with {n_layers} layers: "
        variants = {
            "shared": (dict(query="shared"), "every layer used queries[0]. Layer-wise means that decoder layer i "
                                             "has its own learned table: use queries[i] in layer i."),
            "first": (dict(query="first"), "only your first layer used a query table; the later ones took the "
                                           "previous output as their query (one query for the whole decoder, "
                                           "query='first' in Tab. A2). Layer i uses queries[i]."),
            "chain": (dict(chain=False), "every layer read the encoder output E where it should read P, the "
                                         "previous layer's output (E only for the first layer): set "
                                         "prev = out after each layer."),
            "residual": (dict(residual="kv"), "the residual of each attention must follow its QUERY (DETR, "
                                              "post-norm): r = layer.norm1(q, layer.attn1(q, E, ...)), not "
                                              "norm1(E, ...)."),
            "ffn": (dict(ffn=False), "the feed-forward step is missing: after the two attentions, "
                                     "out = layer.norm3(out, layer.ffn(out))."),
        }
        for design in LQD_DESIGNS:
            if design not in ("a", "vanilla"):
                q1, kv1, q2, kv2 = LQD_DESIGNS[design]
                variants[design] = (dict(design=design), (
                    f"your wiring is design ({design}) of adnotes.models.uniad.LQD_DESIGNS (our lettering of the "
                    f"six designs of UniAD App. C.2): the first attention has {q1} attend to {kv1}, the second "
                    f"{q2} attend to {kv2}. UniAD's design (a): the query Q attends to the encoder output E, then "
                    f"the result R attends to P, the previous layer's output."))
        for kw, text in variants.values():
            if torch.allclose(out, _decoder_variant(enc, queries, layers, pos, mask, **kw), rtol=1e-4, atol=1e-5):
                raise _Wrong(where + text)
        for name, (p, m) in {"pos": (None, mask), "mask": (pos, None)}.items():
            if torch.allclose(out, _decoder_variant(enc, queries, layers, p, m), rtol=1e-4, atol=1e-5):
                raise _Wrong(where + (f"you passed None as {name}: hand `pos` and `mask` to both attentions of "
                                      "every layer (the neighbour mask is on in both, Tab. 5d)."))
        diff = float((out - ref).abs().max())
        raise _Wrong(where + f"your output differs from UniAD's decoder (max |difference| {diff:.3g}). Per layer i: "
                     "q = queries[i] expanded to the batch; r = layer.norm1(q, layer.attn1(q, enc, pos, mask)); "
                     "out = layer.norm2(r, layer.attn2(r, prev, pos, mask)); out = layer.norm3(out, "
                     "layer.ffn(out)); prev = out (prev starts as enc).")
    return ("matches the layer-wise query decoder of adnotes.models.uniad.UniAD (design a, the official code's) "
            "with 2 and 3 layers.")


def check_query_decoder(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``query_decoder(enc, queries, layers, pos, mask) -> (B, N, C)``, UniAD's layer-wise
    query decoder (§3.2, design (a) of App. C.2): layer i's own query table attends to the encoder
    output, the result attends to the previous layer's output; compared with a tiny ``UniAD``'s
    decoder (:func:`query_decoder_example` gives the inputs)."""
    return _run_check("query_decoder", fn, _query_decoder_body, strict)


# ============================================================================ 4. Omni-block local branch
# The student's parameter names -> adnotes.models.omniad.LocalBranch's state-dict names.
LOCAL_BRANCH_PARAMS = {
    "dw3.weight": "conv3.0.weight", "dw3.bias": "conv3.0.bias",    # depthwise 3×3: (C, 1, 3, 3), (C,)
    "pw3.weight": "conv3.3.weight", "pw3.bias": "conv3.3.bias",    # pointwise 1×1: (C, C, 1, 1), (C,)
    "dw5.weight": "conv5.0.weight", "dw5.bias": "conv5.0.bias",    # depthwise 5×5: (C, 1, 5, 5), (C,)
    "pw5.weight": "conv5.3.weight", "pw5.bias": "conv5.3.bias",    # pointwise 1×1: (C, C, 1, 1), (C,)
    "merge.weight": "merge.0.weight", "merge.bias": "merge.0.bias",  # fuse: (C, 2C, 1, 1), (C,)
}


def _local_module(dim: int, seed: int):
    from adnotes.models.omniad import LocalBranch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LocalBranch(dim).eval()


def local_branch_example(batch: int = 2, height: int = 6, width: int = 7, dim: int = 8, seed: int = 0):
    """An input ``x`` (B, H, W, C) and a weight dict ``params`` (names: LOCAL_BRANCH_PARAMS) to try
    ``local_branch(x, params)`` on; ``x`` is (2, 6, 7, 8) by default (all sizes differ on purpose)."""
    module = _local_module(dim, seed)
    state = module.state_dict()
    params = {mine: state[theirs].clone() for mine, theirs in LOCAL_BRANCH_PARAMS.items()}
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(batch, height, width, dim, generator=g), params


def _local_variant(x: torch.Tensor, p: dict, *, norm: str = "instance", act=F.silu, order: int = 3,
                   final: bool = True) -> torch.Tensor:
    """The local branch written out, with switches for the usual mistakes (diagnostics only)."""
    def normalise(y):
        if norm == "instance":
            return F.instance_norm(y)
        if norm == "layer":  # over the channels of each position
            return F.layer_norm(y.permute(0, 2, 3, 1), y.shape[1:2]).permute(0, 3, 1, 2)
        return y

    def branch(y, k):
        y = act(normalise(F.conv2d(y, p[f"dw{k}.weight"], p[f"dw{k}.bias"], padding=k // 2, groups=y.shape[1])))
        return act(normalise(F.conv2d(y, p[f"pw{k}.weight"], p[f"pw{k}.bias"])))

    y = x.permute(0, 3, 1, 2)
    parts = [branch(y, 3), branch(y, 5)]
    y = F.conv2d(torch.cat(parts if order == 3 else parts[::-1], dim=1), p["merge.weight"], p["merge.bias"])
    if final:
        y = act(normalise(y))
    return y.permute(0, 2, 3, 1)


_LOCAL_HINT = ("Reminder: x is channels-last (B, H, W, C); F.conv2d wants (B, C, H, W), so permute(0, 3, 1, 2) "
               "first and permute(0, 2, 3, 1) at the end. The depthwise convs need groups=C and padding=k // 2; "
               "the merge conv takes the 2C concatenated channels.")


def _explain_local_error(message: str) -> str:
    if "to have" in message and "channels" in message:
        return ("F.conv2d got a tensor whose channel axis is not C. " + _LOCAL_HINT)
    if "Sizes of tensors must match" in message:
        return ("the 3×3 and 5×5 outputs differ in size: pad each conv by k // 2 (1 for 3×3, 2 for 5×5) so that "
                "H×W is kept, and concatenate along the channels (dim=1 on (B, C, H, W)).")
    return _LOCAL_HINT


def _local_branch_body(fn: Callable) -> str:
    shapes = [(2, 6, 7, 8, 0), (1, 5, 9, 12, 1)]
    for b, h, w, c, seed in shapes:
        x, params = local_branch_example(b, h, w, c, seed)
        module = _local_module(c, seed)
        ref = module(x)
        what = f"local_branch(x {_shape(x.shape)}, params)"
        out = _as_tensor(_call(fn, x.clone(), {k: v.clone() for k, v in params.items()}, what=what,
                               hint=_explain_local_error), what)
        if tuple(out.shape) != tuple(x.shape):
            got = tuple(out.shape)
            if got == (b, c, h, w):
                extra = " You returned channels-first (B, C, H, W): permute back with .permute(0, 2, 3, 1)."
            elif got == (b, w, h, c):
                extra = (" H and W are swapped: permute(0, 3, 1, 2) turns (B, H, W, C) into (B, C, H, W) and "
                         "permute(0, 2, 3, 1) turns it back.")
            elif got[:1] == (b,) and len(got) == 4 and c in got and got != (b, h, w, c):
                extra = " The spatial size changed: pad each depthwise conv by k // 2 to keep H×W."
            else:
                extra = ""
            raise _Wrong(f"shape (B, H, W, C) = {_shape(x.shape)} expected (the input's), got {_shape(got)}.{extra}")
        if torch.allclose(out, ref, rtol=1e-4, atol=1e-5):
            continue
        variants = {
            "relu": (dict(act=F.relu), "you used ReLU; the Omni-block's convs are followed by SiLU (F.silu)."),
            "gelu": (dict(act=F.gelu), "you used GELU; the Omni-block's convs are followed by SiLU (F.silu)."),
            "no_norm": (dict(norm="none"), "the InstanceNorms are missing: after every conv, normalise each channel "
                                           "of each image over H×W (F.instance_norm on (B, C, H, W)), then SiLU."),
            "layer": (dict(norm="layer"), "you normalised over the channels of each position (LayerNorm); "
                                          "InstanceNorm normalises each channel over H×W: F.instance_norm on "
                                          "(B, C, H, W)."),
            "order": (dict(order=5), "you concatenated the 5×5 branch first: the merge weights expect "
                                     "[3×3 branch, 5×5 branch] along the channels."),
            "final": (dict(final=False), "the merge conv is followed by InstanceNorm and SiLU too (1×1 conv → "
                                         "InstanceNorm → SiLU)."),
        }
        for _, (kw, text) in variants.items():
            if torch.allclose(out, _local_variant(x, params, **kw), rtol=1e-4, atol=1e-5):
                raise _Wrong(text)
        diff = float((out - ref).abs().max())
        raise _Wrong(f"for x of shape {_shape(x.shape)} your output differs from the package's LocalBranch (max "
                     f"|difference| {diff:.3g}). Check each step in order: for k = 3 and 5, depthwise k×k conv "
                     f"(groups=C, padding=k // 2) → InstanceNorm → SiLU → 1×1 conv → InstanceNorm → SiLU; "
                     f"concatenate [3×3, 5×5] on the channels; 1×1 merge conv → InstanceNorm → SiLU. "
                     f"Every conv uses its bias.")
    return ("matches adnotes.models.omniad.LocalBranch with copied weights on "
            + " and ".join(_shape(s[:4]) for s in shapes) + " inputs.")


def check_local_branch(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``local_branch(x, params)``, the Omni-block's local branch written functionally:
    x (B, H, W, C) channels-last -> (B, H, W, C), with the weights ``params`` named as in
    :data:`LOCAL_BRANCH_PARAMS`; compared with ``adnotes.models.omniad.LocalBranch`` whose weights
    are the ones passed in."""
    return _run_check("local_branch", fn, _local_branch_body, strict)


# ============================================================================ 5. image score
def _score_maps(seed: int = 0) -> torch.Tensor:
    """(3, 40, 48) maps: a hot pixel beside a broad blob, a broad blob, smooth negative noise with a bright
    corner (the raw max, the mean, non-overlapping and padded pooling all give other scores)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing="ij")

    def blob(cy, cx, s):
        return torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    maps = 0.1 * torch.rand(3, 40, 48, generator=g)
    maps[0] += 0.6 * blob(28, 34, 6)
    maps[0, 6, 8] += 3.0  # a single hot pixel: the largest raw value, nearly nothing after 16×16 pooling
    maps[1] += blob(12, 20, 8)
    maps[2] += F.avg_pool2d(torch.rand(1, 1, 44, 52, generator=g), 5, stride=1)[0, 0] - 1.0  # negative values
    maps[2, :5, -5:] += 0.8  # a small bright corner: padded windows would see it with fewer (or zero) neighbours
    return maps


def _image_score_body(fn: Callable) -> str:
    from adnotes.metrics import image_score as reference

    checked = []
    for pool in (16, 5):
        maps = _score_maps()
        b, h, w = maps.shape
        what = f"image_score(maps {_shape(maps.shape)}, pool={pool})"
        out = _as_tensor(_call(fn, maps.clone(), pool, what=what,
                               hint="maps is (B, H, W): one anomaly map per image."), what).double()
        ref = reference(maps, pool=pool).double()
        got = tuple(out.shape)
        if got != (b,):
            if out.numel() == 1:
                raise _Wrong(f"one score per image, shape (B,) = ({b},) expected, got one number: reduce over H "
                             f"and W only, e.g. .amax(dim=(-2, -1)), not over the batch.")
            if len(got) >= 2 and got[0] == b and out.numel() > b:
                raise _Wrong(f"shape (B,) = ({b},) expected, got {_shape(got)}: you return (part of) the pooled "
                             f"map; the score is its MAX over H and W, one number per image.")
            if got[0] != b:
                raise _Wrong(f"shape (B,) = ({b},) expected, got {_shape(got)}: you reduced over the batch axis "
                             f"(dim 0); reduce over H and W (dims 1 and 2) instead.")
            raise _Wrong(f"shape (B,) = ({b},) expected, got {_shape(got)}.")
        if torch.allclose(out, ref, rtol=1e-4, atol=1e-6):
            checked.append(pool)
            continue
        x = maps[:, None].double()
        pooled = F.avg_pool2d(x, pool, stride=1)
        variants = [
            (maps.double().amax(dim=(1, 2)),
             "you took the max of the raw map: average-pool it with a pool×pool window first (stride 1), so that "
             "a single hot pixel cannot decide the score (image 0 has one). Note: max_pool2d then max is just the "
             "plain max; use avg_pool2d."),
            (maps.double().mean(dim=(1, 2)),
             "mean instead of max: the mean is UniAD's CIFAR-10 rule; for defects the score is the MAX of the "
             "average-pooled map (a small defect barely moves the mean)."),
            (pooled.mean(dim=(1, 2, 3)),
             "mean instead of max: after pooling, take the MAX over H and W (a small defect barely moves the "
             "mean)."),
            (F.avg_pool2d(x, pool).amax(dim=(1, 2, 3)),
             f"your pooling windows do not overlap: F.avg_pool2d's stride defaults to the kernel size; pass "
             f"stride=1 so that every {pool}×{pool} window counts."),
            (F.avg_pool2d(x, pool, stride=1, padding=pool // 2).amax(dim=(1, 2, 3)),
             "don't pad: the pooling windows stay inside the map (no padding, stride 1)."),
            (F.avg_pool2d(x, pool, stride=1, padding=pool // 2, count_include_pad=False).amax(dim=(1, 2, 3)),
             "don't pad: the pooling windows stay inside the map (no padding, stride 1)."),
            (pooled.amax(dim=(1, 2, 3)) * pool * pool,
             f"you summed each window instead of averaging it (your scores are pool² = {pool * pool}× too large)."),
        ]
        if pool != 16:
            variants.append((F.avg_pool2d(x, 16, stride=1).amax(dim=(1, 2, 3)),
                             f"you ignore the `pool` argument (with pool={pool} you still pooled 16×16)."))
        for value, text in variants:
            if torch.allclose(out, value, rtol=1e-4, atol=1e-6):
                raise _Wrong(f"with pool={pool}: {text}")
        raise _Wrong(f"with pool={pool}: expected scores {[round(v, 4) for v in ref.tolist()]} "
                     f"(adnotes.metrics.image_score), got {[round(v, 4) for v in out.tolist()]}. The score is the "
                     f"max over H and W of the map average-pooled with a pool×pool window, stride 1, no padding.")
    return f"matches adnotes.metrics.image_score (pool {' and '.join(map(str, checked))}) on maps with a hot pixel."


def check_image_score(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``image_score(maps, pool=16) -> (B,)``: the max over H, W of the map average-pooled with
    a pool×pool window, stride 1 (UniAD's image score), against ``adnotes.metrics.image_score``."""
    return _run_check("image_score", fn, _image_score_body, strict)


# ============================================================================ 6. AUROC
def _roc_variants(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """Areas a slightly wrong sweep gives (diagnostics only)."""
    pos, neg = y.sum(), (1 - y).sum()
    thr = np.unique(s)[::-1]
    tpr_ge = np.array([(s[y == 1] >= t).sum() for t in thr]) / pos
    fpr_ge = np.array([(s[y == 0] >= t).sum() for t in thr]) / neg
    tpr_le = np.array([(s[y == 1] <= t).sum() for t in thr]) / pos
    fpr_le = np.array([(s[y == 0] <= t).sum() for t in thr]) / neg
    tpr_gt = np.array([(s[y == 1] > t).sum() for t in thr]) / pos
    fpr_gt = np.array([(s[y == 0] > t).sum() for t in thr]) / neg
    x, z = np.r_[0, fpr_ge], np.r_[0, tpr_ge]
    return {
        "no_start": float(np.trapezoid(tpr_ge, fpr_ge)),
        "no_end": float(np.trapezoid(np.r_[0, tpr_gt], np.r_[0, fpr_gt])),
        "below": float(np.trapezoid(np.r_[0, tpr_le], np.r_[0, fpr_le])),
        "left": float(np.sum(np.diff(x) * z[:-1])),
        "right": float(np.sum(np.diff(x) * z[1:])),
    }


def _auroc_body(fn: Callable) -> str:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y_a = np.r_[np.zeros(24, int), np.ones(16, int)]
    s_a = rng.normal(size=40) + 0.8 * y_a                       # no ties
    y_b = np.r_[np.zeros(30, int), np.ones(30, int)]
    s_b = np.clip(np.round(rng.normal(size=60) + 1.2 * y_b + 2), 0, 4).astype(float)  # 5 levels: many ties
    y_c = np.r_[np.zeros(5, int), np.ones(5, int)]
    s_c = np.r_[rng.uniform(0, 1, 5), rng.uniform(2, 3, 5)]     # perfectly separated
    cases = [("scores without ties", y_a, s_a), ("integer scores with ties", y_b, s_b),
             ("perfectly separated scores", y_c, s_c)]
    for name, y, s in cases:
        what = f"auroc(labels ({len(y)},), scores ({len(y)},))"
        value = _as_float(_call(fn, y.copy(), s.copy(), what=what,
                                hint="labels: 1 = anomalous, 0 = normal; higher scores = more anomalous."), what)
        ref = float(roc_auc_score(y, s))
        tol = 1e-6
        if abs(value - ref) <= tol:
            continue
        where = f"on {name}: expected {ref:.4f} (sklearn.metrics.roc_auc_score), got {value:.4f}. "
        if not math.isfinite(value):
            raise _Wrong(where + "Your area is not finite: is a count divided by zero (no positives/negatives)?")
        if 1 < value <= 100 and abs(value / 100 - ref) <= 1e-4:
            raise _Wrong(where + "Return a fraction in [0, 1], not a percentage.")
        if abs(value + ref) <= tol:
            raise _Wrong(where + "The area is negative: your FPR runs from 1 down to 0 (thresholds from low to "
                                 "high) and np.trapezoid integrates in the order given. Sweep thresholds from high "
                                 "to low, so that the curve starts at (0, 0).")
        if abs(value - (1 - ref)) <= tol and abs(ref - 0.5) > 1e-3:
            raise _Wrong(where + "Your AUROC is 1 − the right value: are scores higher for anomalies? Count a sample "
                                 "as predicted anomalous when its score ≥ the threshold, and integrate TPR (y) over "
                                 "FPR (x): np.trapezoid(tpr, fpr) takes y first.")
        variants = _roc_variants(y, s)
        if abs(value - variants["below"]) <= tol:
            raise _Wrong(where + "You count a sample as predicted anomalous when its score ≤ the threshold. "
                                 "Anomalies have HIGHER scores: predicted anomalous means score ≥ t.")
        if abs(value - variants["no_start"]) <= tol:
            raise _Wrong(where + "Your curve does not start at (0, 0): add the point of a threshold above every "
                                 "score (nothing predicted anomalous) before integrating.")
        if abs(value - variants["no_end"]) <= tol:
            raise _Wrong(where + "With `score > t` even the lowest threshold leaves the lowest-scored samples out, so "
                                 "your curve never reaches (1, 1). Predict anomalous when score ≥ t.")
        staircase = min(abs(value - variants["left"]), abs(value - variants["right"])) <= tol
        if name.startswith("integer") and staircase:
            raise _Wrong(where + "Inside each group of tied scores your curve is a staircase: either you step one "
                                 "sample at a time (tied samples then get an arbitrary order) or you summed "
                                 "rectangles. Samples with equal scores cross the threshold together: one ROC point "
                                 "per DISTINCT score (np.unique(scores)[::-1]), joined by straight lines, i.e. the "
                                 "trapezoid rule np.trapezoid(tpr, fpr) (a tie between a normal and an anomalous "
                                 "sample earns half credit).")
        if name.startswith("integer"):
            raise _Wrong(where + "Your value is right without ties but not with tied scores: samples with equal "
                                 "scores must cross the threshold together, one ROC point per DISTINCT score "
                                 "(np.unique(scores)[::-1]), joined by straight lines (trapezoid rule).")
        raise _Wrong(where + "Build the curve as: for every distinct score t, from high to low, TPR = #(anomalous "
                             "with score ≥ t) / #anomalous and FPR = #(normal with score ≥ t) / #normal; start at "
                             "(0, 0); area = np.trapezoid(tpr, fpr).")
    return "matches sklearn.metrics.roc_auc_score without ties, with ties and on perfectly separated scores."


def check_auroc(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``auroc(labels, scores) -> float`` (labels 1 = anomalous; higher score = more anomalous)
    computed from a threshold sweep, against ``sklearn.metrics.roc_auc_score`` (ties included)."""
    return _run_check("auroc", fn, _auroc_body, strict)


# ============================================================================ 7. AUPRO
def _aupro_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(4, 24, 24) masks and maps: one normal image, a big and a small region, a big found square and a
    small missed one touching only at a corner (one region with 8-connectivity, two with 4), and
    regions at the same place in adjacent images (3-D labelling would merge them)."""
    masks = np.zeros((4, 24, 24), bool)
    masks[1, 3:11, 3:11] = True        # big square, well detected
    masks[1, 17:19, 17:19] = True      # small square, missed
    masks[2, 2:8, 2:8] = True          # big square, well detected ...
    masks[2, 8:10, 8:10] = True        # ... touching a small missed one at a corner
    masks[2, 16:20, 14:20] = True      # a bar, half detected
    masks[3, 4:9, 4:9] = True          # overlaps image 2's squares
    rng = np.random.default_rng(seed)
    maps = rng.normal(0.0, 0.35, masks.shape)
    maps[1, 3:11, 3:11] += 1.4
    maps[1, 17:19, 17:19] += 0.1
    maps[2, 2:8, 2:8] += 1.5
    maps[2, 16:20, 14:20] += 0.6
    maps[3, 4:9, 4:9] += 0.3
    return masks, maps


def _pro_area(masks: np.ndarray, maps: np.ndarray, limit: float, *, regions: str = "8",
              normalise: bool = True) -> float:
    """AUPRO with switches for the usual mistakes (diagnostics only): regions "8", "4" (connectivity),
    "image" (one region per image), "3d" (labelled across images), "pixel" (pooled pixel TPR)."""
    from scipy import ndimage

    n_img = masks.shape[0]
    labels = np.zeros(masks.shape, int)
    count = 0
    if regions in ("8", "4"):
        structure = np.ones((3, 3), bool) if regions == "8" else ndimage.generate_binary_structure(2, 1)
        for i in range(n_img):
            lab, n = ndimage.label(masks[i], structure=structure)
            labels[i] = np.where(lab > 0, lab + count, 0)
            count += n
    elif regions == "3d":
        labels, count = ndimage.label(masks, structure=np.ones((3, 3, 3), bool))
    elif regions == "image":
        for i in range(n_img):
            if masks[i].any():
                count += 1
                labels[i][masks[i]] = count
    elif regions == "pixel":
        labels, count = masks.astype(int), 1
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    weight = np.r_[0.0, 1.0 / (np.maximum(sizes[1:], 1) * count)]
    order = np.argsort(maps.ravel())[::-1]
    s, r = maps.ravel()[order], labels.ravel()[order]
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    fpr = np.r_[0.0, np.cumsum(r == 0)[ends] / (r == 0).sum()]
    pro = np.r_[0.0, np.cumsum(weight[r])[ends]]
    k = np.searchsorted(fpr, limit, side="right")
    if k < fpr.size:
        t = (limit - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        fpr, pro = np.r_[fpr[:k], limit], np.r_[pro[:k], pro[k - 1] + t * (pro[k] - pro[k - 1])]
    area = float(np.trapezoid(pro, fpr))
    return area / limit if normalise else area


AUPRO_TOLERANCE = 0.01  # a threshold grid (e.g. 200 thresholds) instead of every distinct score is fine


def _aupro_body(fn: Callable) -> str:
    from adnotes.metrics import aupro as reference

    masks, maps = _aupro_data()
    results = []
    for limit in (0.3, 0.1):
        what = f"aupro(masks {_shape(masks.shape)}, maps {_shape(maps.shape)}, fpr_limit={limit})"
        value = _as_float(_call(fn, masks.copy(), maps.copy(), limit, what=what,
                                hint="masks: (N, H, W) bool ground truth; maps: (N, H, W) anomaly scores."), what)
        ref = reference(masks, maps, fpr_limit=limit)
        if abs(value - ref) <= AUPRO_TOLERANCE:
            results.append((limit, ref, value))
            continue
        where = f"with fpr_limit={limit}: expected {ref:.4f} (adnotes.metrics.aupro), got {value:.4f}. "
        if not math.isfinite(value):
            raise _Wrong(where + "Your area is not finite: a division by zero (a region of size 0? no normal pixel?).")
        if 1 < value <= 100 and abs(value / 100 - ref) <= AUPRO_TOLERANCE:
            raise _Wrong(where + "Return a fraction in [0, 1], not a percentage.")
        variants = [
            (_pro_area(masks, maps, limit, normalise=False),
             f"Divide the area by the FPR limit ({limit}): the curve lives in a {limit}-wide strip, and dividing "
             f"makes a perfect map score 1."),
            (_pro_area(masks, maps, 1.0),
             f"You integrated over the whole FPR range: stop at FPR = fpr_limit = {limit} (interpolate the point "
             f"at the limit) and divide by it. Only low false-positive rates matter in practice."),
            (_pro_area(masks, maps, 1.0, normalise=False),
             f"You integrated over the whole FPR range: stop at FPR = fpr_limit = {limit} and divide by it."),
            (_pro_area(masks, maps, limit, regions="pixel"),
             "You measured the fraction of ALL anomalous pixels above the threshold (the pixel TPR), which lets "
             "big regions dominate. PRO is the MEAN over regions of each region's covered fraction: a small "
             "missed defect counts as much as a big found one."),
            (_pro_area(masks, maps, limit, regions="image"),
             "You used one region per image (the whole mask). Regions are the connected components of each "
             "image's mask: scipy.ndimage.label(mask, structure=np.ones((3, 3))) gives them."),
            (_pro_area(masks, maps, limit, regions="4"),
             "Your regions use 4-connectivity (ndimage.label's default); AUPRO's regions are 8-connected, "
             "pixels touching at a corner belong together: pass structure=np.ones((3, 3))."),
            (_pro_area(masks, maps, limit, regions="3d"),
             "You labelled the whole (N, H, W) stack at once, so regions at the same place in different images "
             "were merged into one 3-D region. Label each image's mask separately."),
            (_pro_area(masks, -maps, limit),
             "Are scores higher for anomalies? Predict anomalous where map ≥ threshold, thresholds from high to "
             "low (FPR from 0 up)."),
        ]
        if results and abs(value - results[0][2]) <= 1e-9:
            raise _Wrong(where + f"You ignore the fpr_limit argument (you return the value for {results[0][0]}).")
        for other, text in variants:
            if abs(value - other) <= AUPRO_TOLERANCE / 2 and abs(other - ref) > AUPRO_TOLERANCE:
                raise _Wrong(where + text)
        raise _Wrong(where + "Recipe: regions = 8-connected components of each image's mask; for thresholds t from "
                             "high to low, FPR = #(normal pixels ≥ t) / #normal pixels (all images pooled), PRO = "
                             "mean over regions of #(region pixels ≥ t) / region size; start at (0, 0), cut the "
                             "curve at FPR = fpr_limit (interpolating), area = np.trapezoid(pro, fpr) / fpr_limit.")
    exact = all(abs(v - r) <= 1e-6 for _, r, v in results)
    how = ("exact (every distinct score a threshold)" if exact else
           f"within {AUPRO_TOLERANCE} (a threshold grid instead of every distinct score)")
    values = ", ".join(f"{v:.4f} at FPR ≤ {lim}" for lim, _, v in results)
    return f"matches adnotes.metrics.aupro, {how}: {values}."


def check_aupro(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``aupro(masks, maps, fpr_limit=0.3) -> float`` against ``adnotes.metrics.aupro``
    (8-connected regions per image, pooled FPR, cut at the limit, divided by it), to within
    ``AUPRO_TOLERANCE`` so that a threshold grid passes too."""
    return _run_check("aupro", fn, _aupro_body, strict)


# ============================================================================ 8. F1-max
def _f1_variants(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """Values a slightly wrong F1-max gives (diagnostics only)."""
    thr = np.unique(s)[::-1]
    tp = np.array([((s >= t) & (y == 1)).sum() for t in thr])
    fp = np.array([((s >= t) & (y == 0)).sum() for t in thr])
    pos = y.sum()
    order = np.argsort(-s, kind="stable")
    tp1, fp1 = np.cumsum(y[order] == 1), np.cumsum(y[order] == 0)     # one sample at a time
    return {
        "one_at_a_time": float(np.max(2 * tp1 / (tp1 + fp1 + pos))),
        "accuracy": float(np.max((tp + (len(y) - pos - fp)) / len(y))),
        "at_half": float(2 * ((s >= 0.5) & (y == 1)).sum() / ((s >= 0.5).sum() + pos)),
        "mean": float(np.mean(2 * tp / (tp + fp + pos))),
    }


def _f1_max_body(fn: Callable) -> str:
    from adnotes.metrics import f1_max as reference

    rng = np.random.default_rng(1)
    y_a = np.r_[np.zeros(30, int), np.ones(10, int)]
    s_a = rng.uniform(size=40) + 0.35 * y_a                          # no ties, in [0, 1.35)
    y_b = np.r_[np.ones(20, int), np.zeros(20, int)]   # anomalies first: a sweep that splits ties gains
    s_b = np.clip(np.round(rng.normal(size=40) + y_b + 2), 0, 4).astype(float)  # 5 levels: many ties
    cases = [("scores without ties", y_a, s_a), ("integer scores with ties", y_b, s_b)]
    for name, y, s in cases:
        what = f"f1_max(labels ({len(y)},), scores ({len(y)},))"
        value = _as_float(_call(fn, y.copy(), s.copy(), what=what,
                                hint="labels: 1 = anomalous, 0 = normal; higher scores = more anomalous."), what)
        ref = reference(y, s)
        if abs(value - ref) <= 1e-6:
            continue
        where = f"on {name}: expected {ref:.4f} (adnotes.metrics.f1_max), got {value:.4f}. "
        if not math.isfinite(value):
            raise _Wrong(where + "Your value is not finite: precision TP / (TP + FP) is 0/0 at a threshold that "
                                 "predicts nothing. Use only thresholds that predict something (every distinct "
                                 "score, score ≥ t), or write F1 = 2·TP / (2·TP + FP + FN).")
        if 1 < value <= 100 and abs(value / 100 - ref) <= 1e-4:
            raise _Wrong(where + "Return a fraction in [0, 1], not a percentage.")
        texts = {
            "one_at_a_time": "You stepped through the samples one at a time, so tied samples were split. Samples "
                             "with equal scores cross the threshold together: one threshold per DISTINCT score "
                             "(np.unique(scores)).",
            "accuracy": "That is the best ACCURACY over the thresholds; F1 = 2·P·R / (P + R), with precision "
                        "P = TP / (TP + FP) and recall R = TP / #anomalous.",
            "at_half": "That is F1 at the single threshold 0.5; F1-max is the best F1 over every threshold.",
            "mean": "That is the mean F1 over the thresholds; F1-max is the MAXIMUM.",
        }
        for key, other in _f1_variants(y, s).items():
            if abs(value - other) <= 1e-6 and abs(other - ref) > 1e-6:
                raise _Wrong(where + texts[key])
        raise _Wrong(where + "Recipe: for every distinct score t (score ≥ t predicted anomalous): TP, FP, "
                             "P = TP / (TP + FP), R = TP / #anomalous, F1 = 2·P·R / (P + R); return the max.")
    return "matches adnotes.metrics.f1_max without ties and with tied scores."


def check_f1_max(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``f1_max(labels, scores) -> float``: the best F1 = 2PR / (P + R) over every distinct
    threshold (score ≥ t), against ``adnotes.metrics.f1_max``."""
    return _run_check("f1_max", fn, _f1_max_body, strict)


# ============================================================================ 9. an ablation with several seeds
def _base_config():
    from adnotes.train import Config

    return Config.load(None, ["model.name=uniad", "model.args={hidden_dim: 64, jitter_prob: 1.0}",
                              "train.steps=50", "train.seeds=[7]", "data.classes=[brick]"])


def _ablation_configs_body(fn: Callable) -> str:
    from adnotes.train import Config

    base = _base_config()
    before = base.to_dict()
    change, seeds = {"jitter_prob": 0.0, "neighbor_size": 5}, (0, 1, 2)
    what = "ablation_configs(base, {'jitter_prob': 0.0, 'neighbor_size': 5}, seeds=(0, 1, 2))"
    out = _call(fn, base, dict(change), seeds, what=what)
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(c, Config) for c in out)):
        raise _Wrong(f"return a pair (default, ablated) of Config objects, got {type(out).__name__}"
                     + (f" of {len(out)}" if isinstance(out, (tuple, list)) else "") + ".")
    default, ablated = out
    if base.to_dict() != before:
        raise _Wrong("your function changed `base`: work on copies (copy.deepcopy(base), or "
                     "Config.from_dict(base.to_dict())), so that the caller's config stays as it was.")
    if default is base or ablated is base:
        raise _Wrong("return two new configs, not `base` itself.")
    if default.model.args is ablated.model.args or default.train is ablated.train:
        raise _Wrong("your two configs share parts (the same model.args dict or train section), so changing one "
                     "changes the other: copy.copy copies only the top level; use copy.deepcopy.")
    for name, cfg in (("default", default), ("ablated", ablated)):
        if not isinstance(cfg.train.seeds, list):
            raise _Wrong(f"{name}.train.seeds is a {type(cfg.train.seeds).__name__}; store a list, list(seeds): "
                         "the trainer writes the config to YAML, which has no tuples.")
        if cfg.train.seeds != list(seeds):
            raise _Wrong(f"{name}.train.seeds is {cfg.train.seeds}; both runs train on exactly the seeds given, "
                         f"{list(seeds)}, so that they can be compared seed by seed.")
    if default.model.args != before["model"]["args"]:
        raise _Wrong(f"the default config's model.args became {default.model.args}; it must stay base's "
                     f"{before['model']['args']}: only the ablated config gets the change.")
    wanted = {**before["model"]["args"], **change}
    if ablated.model.args != wanted:
        hint = (" You replaced base's model.args by the change and lost its other entries: update a copy "
                "({**args, **change})." if ablated.model.args == change else "")
        raise _Wrong(f"the ablated config's model.args is {ablated.model.args}, expected {wanted}.{hint}")
    rest = [(name, cfg.to_dict()) for name, cfg in (("default", default), ("ablated", ablated))]
    for name, d in rest:
        d["model"].pop("args"), d["train"].pop("seeds")
        expected = {k: dict(v) for k, v in before.items()}
        expected["model"].pop("args"), expected["train"].pop("seeds")
        if d != expected:
            keys = [f"{sec}.{k}" for sec in d for k in d[sec] if d[sec][k] != expected[sec][k]]
            raise _Wrong(f"your {name} config also changed {', '.join(keys)}: an ablation changes one thing.")
    for bad, why in (([0, 1], "two seeds"), ([3, 3, 5], "a repeated seed")):
        _must_refuse(lambda: fn(base, dict(change), bad), f"with {why}, {bad}, raise ValueError",
                     f"with {why}, {bad}, raise ValueError: a mean ± std needs at least 3 distinct seeds "
                     f"(a repeated seed is the same run twice).")
    return ("two independent copies of base on seeds [0, 1, 2]; only model.args differs; fewer than 3 or repeated "
            "seeds are refused.")


def check_ablation_configs(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``ablation_configs(base, change, seeds) -> (default, ablated)``: copies of a
    :class:`adnotes.train.Config` (``base`` unchanged) that train on ``list(seeds)``, the ablated one
    with ``model.args`` updated by ``change``; ValueError for fewer than 3 or repeated seeds."""
    return _run_check("ablation_configs", fn, _ablation_configs_body, strict)


def fake_run(folder, scores: dict[int, float], metric: str = "image_AUROC"):
    """A run folder as the trainer leaves it, with only what :func:`check_seed_scores` reads:
    ``seed<k>/metrics.json`` per seed, a table {class: {metric: value}} whose ``mean`` row holds
    ``scores[k]`` (the classes hold other values). Returns the folder."""
    folder = Path(folder)
    for seed, value in scores.items():
        table = {"brick": {"pixel_AUROC": 0.9, metric: value - 0.05}, "mean": {"pixel_AUROC": 0.8, metric: value},
                 "fundus": {"pixel_AUROC": 0.7, metric: value + 0.05}}      # metric last: it wins over the filler
        (folder / f"seed{seed}").mkdir(parents=True, exist_ok=True)
        (folder / f"seed{seed}" / "metrics.json").write_text(json.dumps(table, indent=2))
    (folder / "config.yaml").write_text("train: {seeds: " + str(sorted(scores)) + "}\n")
    return folder


def _seed_scores_body(fn: Callable) -> str:
    scores = {0: 0.71, 2: 0.69, 10: 0.74}
    with tempfile.TemporaryDirectory() as tmp:
        run = fake_run(tmp, scores)
        what = "seed_scores(run_dir, 'image_AUROC') on a run with seeds 0, 2 and 10"
        out = _call(fn, str(run), "image_AUROC", what=what,
                    hint="run_dir may be a str or a Path: Path(run_dir) / 'seed0' / 'metrics.json'.")
        if not isinstance(out, dict):
            raise _Wrong(f"return a dict {{seed: score}}, got {type(out).__name__}"
                         + (": one value per seed, not their mean." if isinstance(out, float) else "."))
        if set(out) == {f"seed{k}" for k in scores}:
            raise _Wrong("key the dict by the integer seed (0, 2, 10), not the folder name: int(name[4:]).")
        if set(out) == set(range(len(scores))):
            raise _Wrong("you numbered the seeds 0, 1, 2 yourself; the run's seeds are 0, 2 and 10: read each from "
                         "its folder name (seed10 -> 10).")
        if set(out) != set(scores):
            raise _Wrong(f"keys {sorted(out, key=str)} expected {sorted(scores)}: one entry per seed<k> folder "
                         f"(the seed is the number in the folder name).")
        got = {k: out[k] for k in scores}
        if any(abs(float(got[k]) - v) > 1e-12 for k, v in scores.items()):
            if all(abs(float(got[k]) - (v - 0.05)) < 1e-12 for k, v in scores.items()):
                raise _Wrong("you read the first class's row (brick); the run's score is the 'mean' row: "
                             "table['mean'][metric].")
            raise _Wrong(f"expected {scores}, got {got}: read seed<k>/metrics.json, a table {{class: {{metric: "
                         f"value}}}}, and take table['mean'][metric].")
        other = _call(fn, run, "pixel_AUROC", what="seed_scores(run_dir, 'pixel_AUROC')")
        if not isinstance(other, dict) or any(abs(float(other.get(k, -1)) - 0.8) > 1e-12 for k in scores):
            raise _Wrong("with metric='pixel_AUROC' the scores must be that metric's 'mean' row: use the `metric` "
                         "argument.")
    return "reads seed<k>/metrics.json of every seed (0, 2, 10), the 'mean' row of the metric asked for."


def check_seed_scores(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``seed_scores(run_dir, metric='image_AUROC') -> {seed: score}`` on a fake run folder
    (:func:`fake_run`) with seeds 0, 2 and 10: the seed from each ``seed<k>`` folder's name, the
    score from the ``mean`` row of its ``metrics.json``."""
    return _run_check("seed_scores", fn, _seed_scores_body, strict)


def _mean_std_body(fn: Callable) -> str:
    for values in ([0.71, 0.69, 0.74], np.array([0.5, 0.6, 0.7, 0.9]), (1.0, 2.0)):
        what = f"mean_std({list(values)})"
        out = _call(fn, values, what=what)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise _Wrong(f"return a pair (mean, std), got {type(out).__name__}.")
        m, sd = (_as_float(v, what) for v in out)
        mean, std = statistics.mean(values), statistics.stdev(values)
        if abs(m - mean) > 1e-9:
            if abs(m - std) < 1e-9:
                raise _Wrong(f"{what}: you returned (std, mean); return (mean, std).")
            raise _Wrong(f"{what}: mean {mean:.6g} expected, got {m:.6g}.")
        if abs(sd - std) <= 1e-9:
            continue
        n = len(values)
        population = statistics.pstdev(values)
        if abs(sd - population) < 1e-9:
            raise _Wrong(f"{what}: your std divides by n = {n} (np.std's default, ddof=0): {sd:.4g}. The spread of "
                         f"a few seeds is the SAMPLE standard deviation, divided by n − 1 = {n - 1}: "
                         f"np.std(values, ddof=1) or statistics.stdev = {std:.4g}.")
        if abs(sd - std ** 2) < 1e-9 or abs(sd - population ** 2) < 1e-9:
            raise _Wrong(f"{what}: you returned the variance; the standard deviation is its square root.")
        if abs(sd - std / math.sqrt(n)) < 1e-9:
            raise _Wrong(f"{what}: you returned the standard error of the mean, std / √n; return the std itself.")
        raise _Wrong(f"{what}: std {std:.6g} expected (sample std, n − 1), got {sd:.6g}.")
    try:
        out = fn([0.7])
    except ValueError:
        return "mean and sample std (n − 1) of lists, arrays and tuples; one value is refused."
    except NotImplementedError:
        raise _NotDone from None
    except Exception as err:
        raise _Wrong(f"with one value, raise ValueError (got {type(err).__name__}: {err}).") from None
    raise _Wrong(f"mean_std([0.7]) returned {out}: one seed has no spread to estimate (n − 1 = 0); raise "
                 f"ValueError (statistics.stdev does; np.std(ddof=1) returns nan with a warning).")


def check_mean_std(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``mean_std(values) -> (mean, std)``: the mean and the sample standard deviation
    (divided by n − 1) of a list, tuple or array; ValueError for fewer than two values."""
    return _run_check("mean_std", fn, _mean_std_body, strict)


def _paired_differences_body(fn: Callable) -> str:
    default = {0: 0.70, 1: 0.72, 2: 0.69}
    ablated = {2: 0.71, 0: 0.69, 1: 0.75}          # another order: pairs go by seed, not by position
    what = "paired_differences({0: .70, 1: .72, 2: .69}, {2: .71, 0: .69, 1: .75})"
    out = _call(fn, dict(default), dict(ablated), what=what)
    expected = {k: ablated[k] - default[k] for k in default}
    if not isinstance(out, dict):
        raise _Wrong(f"return a dict {{seed: ablated − default}}, got {type(out).__name__}.")
    if set(out) != set(default):
        raise _Wrong(f"keys {sorted(out, key=str)} expected the seeds {sorted(default)}.")
    got = {k: float(out[k]) for k in default}
    close = lambda a, b: all(abs(a[k] - b[k]) < 1e-9 for k in a)  # noqa: E731
    if close(got, expected):
        pass
    elif close(got, {k: -v for k, v in expected.items()}):
        raise _Wrong("your differences are default − ablated; take ablated − default, so that a positive "
                     "difference means the ablation scored higher.")
    elif close(got, dict(zip(default, (a - d for d, a in zip(default.values(), ablated.values()))))):
        raise _Wrong("you paired the two dicts by position (zip of their values); their seeds come in different "
                     "orders. Pair by seed: ablated[seed] − default[seed].")
    else:
        raise _Wrong(f"expected {expected}, got {got}.")
    try:
        fn({0: 0.7, 1: 0.7, 2: 0.7}, {0: 0.7, 1: 0.7, 3: 0.7})
    except (ValueError, KeyError):
        return "differences ablated − default, paired by seed; runs on different seeds are refused."
    except NotImplementedError:
        raise _NotDone from None
    except Exception as err:
        raise _Wrong(f"with seeds {{0, 1, 2}} against {{0, 1, 3}}, raise ValueError (got "
                     f"{type(err).__name__}).") from None
    raise _Wrong("with seeds {0, 1, 2} against {0, 1, 3} you returned differences: runs on different seeds cannot be "
                 "paired; raise ValueError.")


def check_paired_differences(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``paired_differences(default, ablated) -> {seed: ablated[seed] − default[seed]}`` for two
    dicts {seed: score}; ValueError (or KeyError) when their seeds differ."""
    return _run_check("paired_differences", fn, _paired_differences_body, strict)


# ============================================================================ toy data for the labs
def toy_anomaly_maps(n: int = 24, size: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """A small stand-in for a model's output: ``maps`` (n, size, size) float32, ``masks`` (n, size,
    size) bool and ``labels`` (n,) int; half the images have one or two square defects (one big,
    one small), the map responds to big defects more than to small ones, and some normal images
    have a single hot pixel (the case the pooled image score is robust to)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    maps = ndimage.uniform_filter(rng.normal(0.2, 0.05, (n, size, size)), size=(1, 5, 5))  # smooth background
    masks = np.zeros((n, size, size), bool)
    labels = np.zeros(n, int)
    for i in range(n):
        if i % 2:  # defective
            labels[i] = 1
            for side, strength in ((int(rng.integers(size // 6, size // 3)), 0.25), (3, 0.06)):
                if side == 3 and rng.random() < 0.5:
                    continue
                y0, x0 = rng.integers(2, size - side - 2, 2)
                masks[i, y0:y0 + side, x0:x0 + side] = True
                cy, cx = y0 + side / 2, x0 + side / 2
                maps[i] += strength * rng.uniform(0.5, 1.5) * np.exp(
                    -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (side / 2) ** 2))
        elif rng.random() < 0.5:  # a normal image with one hot pixel
            maps[i, rng.integers(size), rng.integers(size)] += 0.6
    return {"maps": maps.astype(np.float32), "masks": masks, "labels": labels}


# ============================================================================ 10. the identity shortcut (lab 4)
def _close(got: float, expected: float, rel: float = 1e-4, tol: float = 1e-6) -> bool:
    return math.isfinite(got) and abs(got - expected) <= tol + rel * abs(expected)


def _block_region(height: int, width: int, top: int, left: int, block: int) -> torch.Tensor:
    """(H, W) bool, True on the block×block block whose top-left cell is (top, left), cell by cell."""
    region = torch.zeros(height, width, dtype=torch.bool)
    for i in range(height):
        for j in range(width):
            region[i, j] = top <= i < top + block and left <= j < left + block
    return region


def _cells_of(region: torch.Tensor) -> str:
    rows, cols = torch.nonzero(region, as_tuple=True)
    if len(rows) == 0:
        return "no token"
    return f"rows {sorted(set(rows.tolist()))} and columns {sorted(set(cols.tolist()))}"


def _transplant_body(fn: Callable) -> str:
    g = torch.Generator().manual_seed(0)
    for C, H, W, top, left, block in ((5, 6, 7, 1, 3, 2), (3, 5, 5, 0, 0, 3), (4, 6, 7, 4, 5, 2)):
        x, donor = torch.randn(C, H, W, generator=g), torch.randn(C, H, W, generator=g) + 5.0
        x0, donor0 = x.clone(), donor.clone()
        what = f"transplant(x {_shape(x.shape)}, donor, top={top}, left={left}, block={block})"
        out = _call(fn, x, donor, top, left, block, what=what)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise _Wrong(f"return a pair (x_new, region), got {type(out).__name__}.")
        if out[0] is x or not torch.equal(x, x0):
            raise _Wrong("you changed x itself (in place): the original map is needed too, as the other half of the "
                         "pair (x, x_new). Work on a copy: x_new = x.clone(), then write the block into x_new.")
        if not torch.equal(donor, donor0):
            raise _Wrong("you changed the donor in place; only x_new, a new tensor, gets the block.")
        x_new, region = _as_tensor(out[0], what), _as_tensor(out[1], what)
        if x_new.dtype == torch.bool and region.dtype != torch.bool:
            raise _Wrong("return (x_new, region) in this order: the features first, then the bool mask.")
        if tuple(x_new.shape) != (C, H, W):
            raise _Wrong(f"x_new must have x's shape (C, H, W) = {_shape((C, H, W))}, got {_shape(x_new.shape)}: "
                         f"return the whole map with the block replaced, not the block alone.")
        if tuple(region.shape) == (C, H, W):
            raise _Wrong(f"region is one flag per TOKEN, shape (H, W) = {_shape((H, W))}, not one per channel "
                         f"{_shape((C, H, W))}: a token is a whole C-vector of the grid.")
        if tuple(region.shape) != (H, W):
            raise _Wrong(f"region must have shape (H, W) = {_shape((H, W))}, got {_shape(region.shape)}.")
        if region.dtype != torch.bool:
            raise _Wrong(f"region has dtype {region.dtype}; return a torch.bool mask (True = the token was "
                         f"replaced), e.g. torch.zeros(H, W, dtype=torch.bool).")
        expected = _block_region(H, W, top, left, block)
        if not torch.equal(region, expected):
            if torch.equal(region, ~expected):
                raise _Wrong("your region is True OUTSIDE the block: True must mark the replaced tokens (R).")
            if torch.equal(region, _block_region(H, W, left, top, block)):
                raise _Wrong(f"rows and columns are swapped: top is the ROW of the block's top-left token (dim 1 "
                             f"of x, H = {H}), left its COLUMN (dim 2, W = {W}): x[:, top:top + block, "
                             f"left:left + block].")
            if int(region.sum()) != block * block:
                raise _Wrong(f"your region has {int(region.sum())} tokens ({_cells_of(region)}); a {block}×{block} "
                             f"block has block² = {block * block}: rows top … top + block − 1 = {top} … "
                             f"{top + block - 1} and columns {left} … {left + block - 1}.")
            raise _Wrong(f"your region marks {_cells_of(region)}; expected {_cells_of(expected)} "
                         f"(top={top}, left={left}, block={block}).")
        if torch.equal(x_new, torch.where(expected, donor, x)):
            continue
        if torch.equal(x_new, donor):
            raise _Wrong("x_new is the whole donor: replace only the block, x elsewhere.")
        if not torch.equal(x_new[:, ~expected], x[:, ~expected]):
            raise _Wrong("outside the block x_new must equal x: your x_new also differs at other tokens (x is "
                         "(C, H, W): index the channels with `:`, the grid with [top:top + block, left:left + block]).")
        inside = x_new[:, expected]                       # (C, block²) the block's tokens, row by row
        if torch.equal(inside, x[:, expected]):
            raise _Wrong("the block still holds x's own tokens: put the donor's tokens there.")
        if torch.equal(inside, donor[:, :block, :block].reshape(C, -1)):
            raise _Wrong("you took the donor's top-left corner; take the donor's tokens at the SAME position as the "
                         "block: donor[:, top:top + block, left:left + block].")
        raise _Wrong("inside the block x_new must hold the donor's tokens at the same position: "
                     "x_new[:, top:top + block, left:left + block] = donor[:, top:top + block, left:left + block].")
    x, donor = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    for top, left, why in ((3, 0, "reaches past the bottom edge (top + block > H)"),
                           (0, -1, "starts left of the grid (left < 0)")):
        _must_refuse(lambda: fn(x.clone(), donor.clone(), top, left, 2), f"a block that {why} must raise ValueError",
                     f"transplant(x (3, 4, 5), donor, top={top}, left={left}, block=2) returned a result, but that "
                     f"block {why}. Raise ValueError: slicing silently cuts such a block short (or, with a negative "
                     f"index, counts from the other edge), and the gain would be measured on other tokens than you "
                     f"think.")
    return ("replaces exactly the block×block block at (top, left) by the donor's tokens at the same position; x "
            "stays as it was; a block that does not fit the grid is refused.")


def check_transplant(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``transplant(x, donor, top, left, block) -> (x_new, region)`` for (C, H, W) maps: x_new is a
    copy of x whose block×block block at (top, left) holds the donor's tokens of that block, region the
    (H, W) bool mask of the block; ValueError for a block that does not fit the grid."""
    return _run_check("transplant", fn, _transplant_body, strict)


def _copy_case(seed: int, outside: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, x_new (4, 6, 5, 6) and region (4, 5, 6): a block of another size in each image and changes δ of
    other scales (the mean of per-image ratios is then not the pooled ratio); ``outside``: the scale of
    small changes outside the region, as with a real defect against its clean twin."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, 5, 6, generator=g)
    region = torch.zeros(4, 5, 6, dtype=torch.bool)
    for i, (top, left, h, w) in enumerate([(0, 0, 1, 1), (1, 2, 2, 2), (2, 1, 3, 2), (3, 3, 2, 3)]):
        region[i, top:top + h, left:left + w] = True
    inside = region.unsqueeze(1)
    delta = torch.randn(x.shape, generator=g) * torch.tensor([0.5, 1.0, 2.0, 4.0]).view(4, 1, 1, 1) * inside
    delta = delta + outside * torch.randn(x.shape, generator=g) * ~inside
    return x, x + delta, region


def _leaky_model(seed: int = 0) -> Callable:
    """A smooth model that mixes neighbouring tokens (it leaks): tanh of a per-token map plus a 3×3 convolution."""
    g = torch.Generator().manual_seed(seed)
    mix, kernel = torch.randn(6, 6, generator=g) / 2, torch.randn(6, 6, 3, 3, generator=g) / 6
    return lambda x: torch.tanh(torch.einsum("dc,nchw->ndhw", mix, x)) + F.conv2d(x, kernel, padding=1)


def _copy_variants(out, out_new, x, x_new, region) -> tuple[dict, dict]:
    """Typical wrong gains and leaks on these inputs, each with its explanation."""
    d_out, delta = (out_new - out).double(), (x_new - x).double()
    inside = region.unsqueeze(1)
    along, energy = (d_out * delta * inside).sum((1, 2, 3)), (delta.square() * inside).sum((1, 2, 3))
    spread = (d_out.square() * ~inside).sum((1, 2, 3))
    per_token = (d_out * delta).sum(1)[region] / delta.square().sum(1)[region]
    E = energy.sum()
    pooled = "sum the numerators and the denominators over every token of R and every image first, then divide once"
    gains = {
        "per_image": ((along / energy).mean(), f"you averaged one ratio per image; {pooled}. Per-image ratios give "
                      f"an image with a tiny change (a one-token block, a small δ) as much weight as one with a large "
                      f"change; the pooled ratio is the least-squares slope over every changed token."),
        "per_token": (per_token.mean(), f"you averaged per-token ratios ⟨Δf_t, δ_t⟩ / ‖δ_t‖²; {pooled}. A token "
                      f"with a tiny δ_t gives a noisy ratio that counts as much as a token with a large change."),
        "no_mask": ((d_out * delta).sum() / delta.square().sum(), "you summed over every token, not only over the "
                    "region R: multiply by the region mask (region[:, None] broadcasts it over the channels). Here δ "
                    "is small but not zero outside R, as with a real defect against its clean twin; only R counts."),
        "sign": (-along.sum() / E, "your sign is flipped: take δ and Δf in the same direction, δ = x_new − x and "
                 "Δf = out_new − out (both 'new minus old')."),
        "norms": (((d_out.square() * inside).sum() / E).sqrt(), "you compared sizes, ‖Δf‖ against ‖δ‖, not "
                  "directions: g projects the output's change onto δ, Σ ⟨Δf_t, δ_t⟩ (the inner product over the "
                  "channels). An output that changes in another direction than δ does not copy it."),
        "norms_squared": ((d_out.square() * inside).sum() / E, "you compared sizes, ‖Δf‖² against ‖δ‖², not "
                          "directions: g projects the output's change onto δ, Σ ⟨Δf_t, δ_t⟩."),
        "by_output": (along.sum() / (d_out.square() * inside).sum(), "you divided by the output's change Σ ‖Δf_t‖²; "
                      "g divides by the input's change Σ_R ‖δ_t‖², the same for every model."),
    }
    leaks = {
        "all": ((d_out.square()).sum() / E, "your leak also counts the tokens inside R: the leak is the output's "
                "change OUTSIDE the region, Σ_{t∉R} ‖Δf_t‖² (use ~region)."),
        "sqrt": ((spread.sum() / E).sqrt(), "your leak is a square root: ℓ = Σ_{t∉R} ‖Δf_t‖² / Σ_{t∈R} ‖δ_t‖², "
                 "squared norms on both sides."),
        "per_image": ((spread / energy).mean(), f"your leak averages one ratio per image; {pooled}."),
        "outside_energy": (spread.sum() / (delta.square() * ~inside).sum(), "divide the leak by the input's change "
                           "INSIDE R, Σ_{t∈R} ‖δ_t‖², the same denominator as g."),
        "all_energy": (spread.sum() / delta.square().sum(), "divide the leak by the input's change inside R only, "
                       "Σ_{t∈R} ‖δ_t‖², the same denominator as g."),
    }
    return ({k: (float(v), t) for k, (v, t) in gains.items()}, {k: (float(v), t) for k, (v, t) in leaks.items()})


def _gain_pair(fn: Callable, out, out_new, x, x_new, region, what: str) -> tuple[float, float]:
    result = _call(fn, out, out_new, x, x_new, region, what=what)
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise _Wrong(f"return a pair (gain, leak) of floats, got {type(result).__name__}.")
    for value in result:
        if isinstance(value, (torch.Tensor, np.ndarray)) and np.prod(value.shape, dtype=int) > 1:
            raise _Wrong(f"{what} returned an array of shape {tuple(value.shape)}: return two floats, each a ratio "
                         f"of sums pooled over all images and tokens (not one value per image).")
    return _as_float(result[0], what), _as_float(result[1], what)


def _copy_gain_body(fn: Callable) -> str:
    from adnotes.copying import gain_and_leak

    # the identity copies every change (g = 1, no leak); a constant ignores it (g = 0)
    x, x_new, region = _copy_case(1)
    g, leak = _gain_pair(fn, x.clone(), x_new.clone(), x, x_new, region, "copy_gain for the identity (out = x)")
    if _close(g, 0.0) and _close(leak, 1.0):
        raise _Wrong("you return (leak, gain); return (gain, leak).")
    if _close(g, -1.0):
        raise _Wrong("the identity gives g = −1 with your code: take δ and Δf in the same direction, δ = x_new − x "
                     "and Δf = out_new − out (both 'new minus old').")
    stages = [("the identity (out = x)", (x, x_new, x, x_new, region), 1.0, 0.0)]
    const = torch.full_like(x, 0.3)
    g, _ = _gain_pair(fn, const, const.clone(), x, x_new, region, "copy_gain for a constant model")
    if not math.isfinite(g):
        raise _Wrong(f"a constant model gives g = {g}: divide by the INPUT's change Σ_R ‖δ_t‖², never by the "
                     f"output's (a constant model does not change its output at all).")
    stages.append(("a constant model", (const, const, x, x_new, region), 0.0, 0.0))
    # a per-token linear map w: g = Σ δᵀwδ / Σ ‖δ‖² over the changed tokens, by brute force, no leak
    w = torch.randn(6, 6, generator=torch.Generator().manual_seed(2))
    x, x_new, region = _copy_case(2)
    num = den = 0.0
    for n, i, j in torch.nonzero(region).tolist():
        d = (x_new[n, :, i, j] - x[n, :, i, j]).double()
        num, den = num + float(d @ w.double() @ d), den + float(d @ d)
    linear = [torch.einsum("dc,nchw->ndhw", w, v) for v in (x, x_new)]     # f(x)_t = w x_t
    stages.append(("a per-token linear map w (Σ δᵀwδ / Σ ‖δ‖², by brute force)", (*linear, x, x_new, region),
                   num / den, 0.0))
    # a model that mixes neighbours (it leaks), small changes outside R: against adnotes.copying
    x, x_new, region = _copy_case(3, outside=0.05)
    model = _leaky_model()
    out, out_new = model(x), model(x_new)
    along, spread, energy = gain_and_leak(out, out_new, x, x_new, region)
    stages.append(("a model that mixes neighbours (adnotes.copying.gain_and_leak)", (out, out_new, x, x_new, region),
                   float(along.sum() / energy.sum()), float(spread.sum() / energy.sum())))
    for label, args, g_ref, leak_ref in stages:
        g, leak = _gain_pair(fn, *(a.clone() for a in args), f"copy_gain for {label}")
        gains, leaks = _copy_variants(*args)
        for got, expected, name, variants in ((g, g_ref, "g", gains), (leak, leak_ref, "ℓ", leaks)):
            if _close(got, expected):
                continue
            for value, text in variants.values():
                if _close(got, value):
                    raise _Wrong(text)
            raise _Wrong(f"for {label}: {name} = {expected:.6g} expected, got {got:.6g}. g = Σ_R ⟨Δf_t, δ_t⟩ / "
                         f"Σ_R ‖δ_t‖² and ℓ = Σ_(t∉R) ‖Δf_t‖² / Σ_R ‖δ_t‖², with Δf = out_new − out and "
                         f"δ = x_new − x, every sum pooled over all images.")
    return ("identity → g = 1, constant → 0, a per-token linear map → Σ δᵀwδ / Σ ‖δ‖²; g and ℓ match "
            "adnotes.copying on a model that leaks (sums pooled over images, only the region counts).")


def check_copy_gain(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``copy_gain(out, out_new, x, x_new, region) -> (gain, leak)`` for (N, C, H, W) maps and an
    (N, H, W) bool region: g = Σ_R ⟨Δf, δ⟩ / Σ_R ‖δ‖², ℓ = Σ_(not R) ‖Δf‖² / Σ_R ‖δ‖², pooled over images;
    against the identity (1), a constant (0), a per-token linear map (brute force) and
    ``adnotes.copying.gain_and_leak``."""
    return _run_check("copy_gain", fn, _copy_gain_body, strict)


def _token_jacobians(model, channels: int, points: int = 16, seed: int = 0) -> list[torch.Tensor]:
    """The (C, C) Jacobians of a per-token map at ``points`` random tokens (each fed as a 1×1 feature map)."""
    g = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        return [torch.autograd.functional.jacobian(lambda v: model(v.view(1, channels, 1, 1)).reshape(channels),
                                                   torch.randn(channels, generator=g)).double()
                for _ in range(points)]


def _rank(matrices: list[torch.Tensor]) -> int:
    return int(torch.linalg.matrix_rank(torch.cat(matrices, dim=1), rtol=1e-4))


def _bottleneck_body(fn: Callable) -> str:
    C, notes = 12, []
    for width in (3, 20):
        what = f"bottleneck({C}, {width})"
        model = _call(fn, C, width, what=what)
        if isinstance(model, type):
            raise _Wrong(f"{what} returned a class ({model.__name__}); return a model, an instance: e.g. "
                         f"nn.Sequential(...).")
        if not isinstance(model, torch.nn.Module):
            raise _Wrong(f"{what} returned a {type(model).__name__}; return an nn.Module (e.g. nn.Sequential).")
        other = _call(fn, C, width, what=what)
        if other is model or {id(p) for p in model.parameters()} & {id(p) for p in other.parameters()}:
            raise _Wrong("two calls returned the same model (or shared weights): build a new model on every call, "
                         "so that each width of the sweep trains its own.")
        if not any(p.requires_grad for p in model.parameters()):
            raise _Wrong(f"{what} has no trainable parameters.")
        model.eval()
        x = torch.randn(2, C, 5, 6, generator=torch.Generator().manual_seed(width))
        out = _as_tensor(_call(model, x, what=f"your model on features (2, {C}, 5, 6)",
                               hint="the model takes (N, C, H, W) feature maps: nn.Conv2d(C, d, 1) works on them "
                                    "as they are; nn.Linear would need the channels last."), "your model")
        if tuple(out.shape) != tuple(x.shape):
            raise _Wrong(f"the model must reconstruct its input: output shape {_shape(x.shape)} expected, got "
                         f"{_shape(out.shape)}.")
        poked = x.clone()
        poked[0, :, 2, 3] += 3 * torch.randn(C, generator=torch.Generator().manual_seed(1))
        moved = (model(poked) - out).abs().amax(1) > 1e-5                           # (2, 5, 6)
        moved[0, 2, 3] = False
        if moved.any():
            raise _Wrong(f"changing one token of the input also changed {int(moved.sum())} other tokens of the "
                         f"output: your model mixes neighbouring tokens (a k×k convolution with k > 1?). A per-token "
                         f"model maps each token on its own: 1×1 convolutions (or nn.Linear over the channels).")
        jac = _token_jacobians(model, C)
        rank, expected = _rank(jac), min(width, C)
        if rank > expected:
            if _rank([j - torch.eye(C, dtype=j.dtype) for j in jac]) <= width:
                raise _Wrong(f"your model adds its input back (a skip connection, x + g(x)): a skip connection "
                             f"copies every token by construction, so every width would give g ≈ 1. The whole "
                             f"output must pass through the {width} hidden units.")
            raise _Wrong(f"your model's output varies in {rank} directions of the {C} channels, more than its width "
                         f"{width}: is the hidden layer `channels` wide instead of `width`? Every token must pass "
                         f"through `width` hidden units.")
        if rank < expected:
            raise _Wrong(f"your model's output varies in only {rank} directions, fewer than min(width, C) = "
                         f"{expected}: the hidden layer should have `width` units.")
        a, b = (torch.randn(1, C, 1, 1, generator=torch.Generator().manual_seed(s)) for s in (5, 6))
        if not notes and torch.allclose(model(a + b) - model(b), model(a) - model(torch.zeros_like(a)), atol=1e-5):
            notes.append("\n(note: your bottleneck is linear: at best it learns the projection on the top principal "
                         "components, the reference line of part 5; an activation such as nn.GELU() between the two "
                         "layers makes it a small MLP.)")
    return (f"a new per-token model on every call; each token passes through `width` hidden units (checked: width 3 "
            f"and 20 for C = {C}); no skip connection." + "".join(notes))


def check_bottleneck(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``bottleneck(channels, width) -> nn.Module``: a new model on every call that maps (N, C, H, W)
    to (N, C, H, W) token by token (no mixing of neighbours) through ``width`` hidden units (the rank of its
    token Jacobians is min(width, C); no skip connection)."""
    return _run_check("bottleneck", fn, _bottleneck_body, strict)


def _toy_features(seed: int = 0, n: int = 10, channels: int = 6, size: int = 4) -> torch.Tensor:
    """(n, C, size, size) float32 features near a 2-dimensional subspace: a small bottleneck learns them."""
    g = torch.Generator().manual_seed(seed)
    latent, mix = torch.randn(n, 2, size, size, generator=g), torch.randn(channels, 2, generator=g)
    return torch.einsum("ck,nkhw->nchw", mix, latent) + 0.1 * torch.randn(n, channels, size, size, generator=g)


def _toy_bottleneck(channels: int, width: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(channels, width, 1), nn.GELU(), nn.Conv2d(width, channels, 1))


def _train_reconstructor_body(fn: Callable) -> str:
    features = _toy_features()
    kept = features.clone()
    steps, seed = 50, 1
    what = (f"train_reconstructor(model, features {_shape(features.shape)}, steps={steps}, seed={seed}, lr=0.01, "
            f"batch=4)")

    runs: list = []

    def trained(seed_: int, lr: float, calls: list | None = None) -> dict:
        model = _toy_bottleneck(6, 3)
        torch.manual_seed(1000 + len(runs))   # a new global random state per call: only `seed` may repeat a run
        runs.append(seed_)
        if calls is not None:   # the batch of every forward pass that computes gradients
            model.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])) if torch.is_grad_enabled()
                                            else None)
        with torch.enable_grad():
            out = _call(fn, model, features, steps, seed_, lr, 4, what=what)
        if not isinstance(out, torch.nn.Module):
            raise _Wrong(f"return the trained model (an nn.Module), got {type(out).__name__}.")
        return {k: v.detach().clone() for k, v in out.state_dict().items()}

    calls: list = []
    weights = trained(seed, 0.01, calls)
    if not torch.equal(features, kept):
        raise _Wrong("you changed the features in place; only the model's weights may change.")
    if len(calls) < steps:
        raise _Wrong(f"{len(calls)} forward passes with gradients for steps={steps}: every step is one forward pass "
                     f"on a batch, the loss, backward() and the optimizer's step().")
    if len(calls) > steps + 2:
        raise _Wrong(f"{len(calls)} forward passes with gradients for steps={steps}: run exactly `steps` training "
                     f"steps (measure without gradients, under torch.no_grad()).")
    if set(calls[:steps]) != {4}:
        raise _Wrong(f"your batches hold {sorted(set(calls))} images; each step takes `batch` = 4 images: "
                     f"features[idx] with len(idx) == batch.")
    model = _toy_bottleneck(6, 3)
    error_before = float((model(features) - features).square().mean())
    model.load_state_dict(weights)
    error_after = float((model(features) - features).square().mean())
    if not error_after < 0.7 * error_before:
        raise _Wrong(f"the reconstruction error did not fall: {error_before:.4g} before, {error_after:.4g} after "
                     f"{steps} steps with lr=0.01. Each step: loss = ((model(x) − x)²).mean(), "
                     f"optimizer.zero_grad(), loss.backward(), optimizer.step().")
    again = trained(seed, 0.01)
    if any(not torch.equal(weights[k], again[k]) for k in weights):
        raise _Wrong("not reproducible: the same model, features and seed gave other weights the second time. Draw "
                     "the batches from a generator seeded with `seed` (torch.Generator().manual_seed(seed)), or call "
                     "torch.manual_seed(seed) first.")
    other = trained(seed + 1, 0.01)
    if all(torch.equal(weights[k], other[k]) for k in weights):
        raise _Wrong("seed=1 and seed=2 gave the same weights: the `seed` argument is ignored; seed the batches "
                     "with it.")
    frozen = trained(seed, 0.0)
    if any(not torch.equal(frozen[k], v) for k, v in _toy_bottleneck(6, 3).state_dict().items()):
        raise _Wrong("with lr=0 the weights still moved: the `lr` argument is ignored; pass it to the optimizer.")
    return (f"{steps} steps on batches of 4; the error fell from {error_before:.3g} to {error_after:.3g}; the same "
            f"seed gives the same weights, another seed others; lr is used.")


def check_train_reconstructor(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``train_reconstructor(model, features, steps, seed, lr=1e-3, batch=2) -> model`` on a tiny
    bottleneck: ``steps`` training steps on batches of ``batch`` maps lower the reconstruction error;
    the same seed gives the same weights, another seed others; ``lr`` reaches the optimizer."""
    return _run_check("train_reconstructor", fn, _train_reconstructor_body, strict)


def tiny_splits(seed: int = 0):
    """A tiny train and test split for trying the lab-4 functions in a blink: two classes with their own
    means, C = 6 channels on a 4×4 grid; 12 normal train maps; 16 test maps, half of them defective (a
    foreign 2×2 block of tokens, masks at 32×32). Returns (train, test) :class:`adnotes.features.FeatureSet`."""
    from adnotes.features import FeatureSet

    g = torch.Generator().manual_seed(seed)
    classes = ["a"] * 6 + ["b"] * 6 + ["a"] * 8 + ["b"] * 8                 # 12 train maps, then 16 test maps
    means = torch.tensor([[0.0] * 3 + [2.0] * 3 if c == "a" else [2.0] * 3 + [0.0] * 3 for c in classes])
    features = _toy_features(seed, len(classes)) + means.view(-1, 6, 1, 1)   # (28, 6, 4, 4)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1] * 2)
    masks = torch.zeros(16, 32, 32, dtype=torch.bool)
    for i in torch.nonzero(labels).flatten().tolist():                     # a foreign block in each defective map
        r, c = i % 3, i % 2 + 1
        features[12 + i, :, r:r + 2, c:c + 2] += 3 * torch.randn(6, 1, 1, generator=g)
        masks[i, 8 * r:8 * r + 16, 8 * c:8 * c + 16] = True
    train = FeatureSet(features[:12].half(), torch.zeros(12, dtype=torch.long), classes[:12], None)
    return train, FeatureSet(features[12:].half(), labels, classes[12:], masks)


def _sweep_reference(model, test, probe) -> dict[str, float]:
    from adnotes.copying import copying
    from adnotes.evaluation import evaluate_maps
    from adnotes.train import anomaly_maps

    table = evaluate_maps(anomaly_maps(model, test), test, pixel=False, aupro=False, progress=False)
    return {**copying(model, probe), "table": table, "image_AUROC": float(table.loc["mean", "image_AUROC"])}


def _width_sweep_body(fn: Callable) -> str:
    from adnotes.copying import transplant_probe

    train, test = tiny_splits()
    probe = transplant_probe(test, n=6, block=2, donor="other_class", seed=0)
    kept = [t.clone() for t in (probe.x, probe.x_new, probe.region)]
    widths, steps, seed = [2, 5], 40, 3
    calls: list = []

    def sweep(steps_: int) -> dict:
        what = f"width_sweep({widths}, train, test, probe, steps={steps_}, seed={seed}) on labs.tiny_splits()"
        torch.manual_seed(steps_ + len(calls))   # a new global random state per call: only `seed` may repeat a sweep
        calls.append(steps_)
        with torch.enable_grad():
            out = _call(fn, list(widths), train, test, probe, steps_, seed, what=what,
                        hint="the check runs your sweep on labs.tiny_splits() (C = 6 channels on a 4×4 grid) with a "
                             "probe of its own: use only the arguments (train.channels, probe, steps, seed), not the "
                             "notebook's globals (C, probe, STEPS, SEED).")
        if not isinstance(out, dict):
            raise _Wrong(f"return a dict {{width: {{'model', 'gain', 'leak', 'image_AUROC'}}}}, got "
                         f"{type(out).__name__}.")
        if set(out) == {str(d) for d in widths}:
            raise _Wrong("key the dict by the integer width (2, 5), not by a string.")
        if set(out) != set(widths):
            raise _Wrong(f"keys {sorted(out, key=str)}: one entry per width of {widths} expected.")
        for d in widths:
            missing = {"model", "gain", "leak", "image_AUROC"} - set(out[d] if isinstance(out[d], dict) else {})
            if missing:
                raise _Wrong(f"the entry of width {d} must be a dict with 'model', 'gain', 'leak' and 'image_AUROC'; "
                             f"missing {sorted(missing)}.")
            if not isinstance(out[d]["model"], torch.nn.Module):
                raise _Wrong(f"the entry 'model' of width {d} must be the trained model (an nn.Module).")
        return out

    out = sweep(steps)
    if any(not torch.equal(a, b) for a, b in zip(kept, (probe.x, probe.x_new, probe.region))):
        raise _Wrong("your sweep changed the probe in place: every width must meet the same, unchanged probe.")
    models = [out[d]["model"] for d in widths]
    if models[0] is models[1]:
        raise _Wrong("every width got the same model object: build a new bottleneck(C, d) for each width d.")
    if len({sum(p.numel() for p in m.parameters()) for m in models}) == 1:
        raise _Wrong("the models of widths 2 and 5 have the same size: pass each width d to bottleneck(C, d).")
    for d in widths:
        ref = _sweep_reference(out[d]["model"], test, probe)
        got = {k: _as_float(out[d][k], f"the {k!r} of width {d}") for k in ("gain", "leak", "image_AUROC")}
        for key, name in (("gain", "g"), ("leak", "ℓ")):
            if not _close(got[key], ref[key]):
                raise _Wrong(f"width {d}: your {name} = {got[key]:.5g}, but its model's copy {key} on the probe you "
                             f"were given is {ref[key]:.5g}. Measure each width's model after training, with "
                             f"copy_gain on probe.x, probe.x_new and probe.region: the same probe for every width.")
        auroc = ref["image_AUROC"]
        if abs(got["image_AUROC"] - auroc) > 1e-9:
            rows = ref["table"]["image_AUROC"]
            if abs(got["image_AUROC"] - 100 * auroc) < 1e-6:
                raise _Wrong("keep the image AUROC as the table gives it, a fraction in [0, 1], not a percentage.")
            if any(abs(got["image_AUROC"] - v) < 1e-9 for k, v in rows.items() if k != "mean"):
                raise _Wrong("you took the image AUROC of one class; take the table's 'mean' row: "
                             "table.loc['mean', 'image_AUROC'].")
            raise _Wrong(f"width {d}: image AUROC {auroc:.4f} expected (evaluate_maps(anomaly_maps(model, test), "
                         f"test, pixel=False, aupro=False), 'mean' row), got {got['image_AUROC']:.4f}.")
    again = sweep(steps)
    if any(not _close(_as_float(again[d]["gain"], "gain"), _as_float(out[d]["gain"], "gain"), 1e-9, 1e-12)
           for d in widths):
        raise _Wrong(f"not reproducible: two sweeps with seed={seed} gave other gains. Seed every width the same "
                     f"way: torch.manual_seed(seed) before building its model, and seed=seed for its batches.")
    short = sweep(2)
    if all(torch.equal(a, b) for d in widths for a, b in zip(out[d]["model"].state_dict().values(),
                                                              short[d]["model"].state_dict().values())):
        raise _Wrong(f"with steps=2 and steps={steps} your models end with the same weights: train each width's "
                     f"model for `steps` steps (train_reconstructor) before measuring it.")
    return ("one trained model per width, its g and ℓ measured on the probe given (unchanged), its image AUROC "
            "from the one evaluation path, the same numbers on a second call.")


def check_width_sweep(fn: Callable, *, strict: bool | None = None) -> bool:
    """Check ``width_sweep(widths, train, test, probe, steps, seed) -> {d: {"model", "gain", "leak",
    "image_AUROC"}}`` on :func:`tiny_splits`: a new model per width, trained (``steps`` matters), its copy
    gain and leak on the probe it was given, its image AUROC from ``evaluate_maps``' mean row, and the
    same numbers on a second call with the same seed."""
    return _run_check("width_sweep", fn, _width_sweep_body, strict)
