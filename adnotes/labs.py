"""Self-checks for the course labs (``notebooks/labs/``): a student writes one function in a TODO
cell, and the next cell checks it on small fixed inputs against a reference, saying in words what
is wrong.

    from adnotes import labs
    labs.check_neighbor_mask(neighbor_mask)   # prints "✓ ..." or "✗ ..." with the reason; True/False

The contract of every ``check_<name>(fn, *, strict=None)``:

- it calls ``fn`` on small inputs with fixed seeds (the global random state is restored afterwards)
  and compares with the reference: the package's own implementation, scikit-learn for AUROC;
- on success it prints ``✓ <name>: ...`` and returns True;
- on failure it prints ``✗ <name>: <what is wrong, in terms of the method>`` and returns False, so
  the notebook goes on. A stub that still raises ``NotImplementedError`` gets "not implemented
  yet: fill in the TODO cell above"; any other exception is reported by type and message with a
  hint, never as a traceback;
- strict mode (``strict=True``, or the environment variable ``ADNOTES_LABS_STRICT=1`` when
  ``strict`` is None) raises :class:`LabCheckError` with the same explanation instead of
  returning False (for tests and autograders).

Checks (the labs' functions and their signatures):

    check_neighbor_mask   neighbor_mask(height, width, k) -> (H·W, H·W) bool, True = blocked  (UniAD §3.2, Fig. 5)
    check_feature_jitter  feature_jitter(tokens (B, N, C), scale, prob) -> (B, N, C)           (UniAD Eq. 3)
    check_local_branch    local_branch(x (B, H, W, C), params) -> (B, H, W, C)   (Omni-block local branch)
    check_image_score     image_score(maps (B, H, W), pool=16) -> (B,)     (max of the pooled map, UniAD)
    check_auroc           auroc(labels (N,), scores (N,)) -> float          (ROC from a threshold sweep)
    check_aupro           aupro(masks (N, H, W), maps (N, H, W), fpr_limit=0.3) -> float   (PRO curve)

Helpers for trying a function before checking it: :func:`local_branch_example` (an input and
the weight dict) and :func:`toy_anomaly_maps` (a small set of maps, masks and labels).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LabCheckError", "check_neighbor_mask", "check_feature_jitter", "check_local_branch",
           "check_image_score", "check_auroc", "check_aupro", "local_branch_example", "toy_anomaly_maps",
           "LOCAL_BRANCH_PARAMS", "STRICT_ENV"]

STRICT_ENV = "ADNOTES_LABS_STRICT"


class LabCheckError(AssertionError):
    """A lab check failed (strict mode); the message says what is wrong."""


class _Wrong(Exception):
    """Internal: the student's answer is wrong; the message is the explanation."""


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
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                note = body(fn)
            print(f"✓ {name}: {_indent(note)}")
            return True
        except _NotDone:
            message = (f"not implemented yet: fill in the TODO cell above (replace `raise NotImplementedError` "
                       f"with your code), run it, then run this check again.")
        except _Wrong as wrong:
            message = str(wrong)
    print(f"✗ {name}: {_indent(message)}")
    if _strict(strict):
        raise LabCheckError(f"{name}: {message}")
    return False


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


# ============================================================================ 3. Omni-block local branch
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


# ============================================================================ 4. image score
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


# ============================================================================ 5. AUROC
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


# ============================================================================ 6. AUPRO
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
