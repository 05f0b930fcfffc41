"""Tests for UniAD, its transformer/MLP baselines and the shared objectives.

References are independent of the code under test: masks built with Python loops, noise
statistics against Eq. 3 written out here, losses and maps from their formulas, parameter counts
from the architecture arithmetic. Small sizes (C_in 24, 6×6 grid, hidden 32) keep it fast.
"""
import itertools
import math

import numpy as np
import pytest
import torch

from adnotes import models
from adnotes.models.baselines import MLP
from adnotes.models.objectives import LOSS_KINDS, anomaly_map, loss_fn, reconstruction_loss
from adnotes.models.uniad import LQD_DESIGNS, UniAD, UniADConfig, feature_jitter, neighbor_mask

C_IN, H, W = 24, 6, 6
SMALL = dict(in_channels=C_IN, feature_size=(H, W), hidden_dim=32, num_heads=4, ffn_dim=64,
             num_encoder_layers=2, num_decoder_layers=2, neighbor_size=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def small(name: str = "uniad", **fields) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create(name, **{**SMALL, **fields})


def features(batch: int = 2, seed: int = 1, channels: int = C_IN) -> torch.Tensor:
    return torch.randn(batch, channels, H, W, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- shapes of every switch
QUERY_DESIGN = [(q, d) for q in ("none", "first", "every") for d in LQD_DESIGNS if (q, d) != ("every", "vanilla")]


@pytest.mark.parametrize("query, design", QUERY_DESIGN)
def test_shapes_every_query_mode_and_design(query, design):
    model = small(query=query, decoder_design=design)
    x = features()
    for train in (True, False):
        model.train(train)
        assert model(x).shape == x.shape


@pytest.mark.parametrize("nma", list(itertools.product([False, True], repeat=3)))
@pytest.mark.parametrize("k", [1, 3, 5])
def test_shapes_nma_subsets_and_neighbor_sizes(nma, k):
    x = features()
    assert small(neighbor_mask=nma, neighbor_size=k)(x).shape == x.shape


@pytest.mark.parametrize("n_enc, n_dec", [(0, 2), (2, 0), (1, 1), (3, 2)])
@pytest.mark.parametrize("name", ["uniad", "transformer", "mlp"])
def test_shapes_layer_counts_and_models(name, n_enc, n_dec):
    x = features()
    assert small(name, num_encoder_layers=n_enc, num_decoder_layers=n_dec)(x).shape == x.shape


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_loss_kind_is_a_config_value(kind):
    model = small(loss=kind)
    x = features()
    assert model.config.loss == kind
    assert reconstruction_loss(x, model(x), model.config.loss).ndim == 0
    assert anomaly_map(x, model(x), model.config.loss).shape == (2, H, W)


def test_quick_preset_shrinks_the_model():
    cfg = UniADConfig.quick(in_channels=192)
    assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.hidden_dim, cfg.ffn_dim) == (2, 2, 128, 512)
    assert cfg.in_channels == 192 and cfg.neighbor_size == (7, 7) and cfg.query == "every"
    assert models.create("uniad", preset="quick").config == UniADConfig.quick()


@pytest.mark.parametrize("bad", [
    dict(query="two"), dict(decoder_design="g"), dict(query="every", decoder_design="vanilla"),
    dict(neighbor_size=4), dict(neighbor_mask=(True, True)), dict(loss="l1"), dict(jitter_prob=1.5),
    dict(hidden_dim=30), dict(no_such_field=1), dict(preset="huge"),
])
def test_bad_config_raises_value_error(bad):
    with pytest.raises(ValueError):
        small(**bad)


def test_wrong_input_and_oversized_window_raise():
    with pytest.raises(ValueError, match="expected features"):
        small()(torch.randn(2, C_IN + 1, H, W))
    with pytest.raises(ValueError, match="neighbor window"):
        small(neighbor_size=7)(features())  # a 7×7 window covers the whole 6×6 grid for centre tokens


# The six LQD designs as derived in uniad.py's docstring (App. C.2), plus the vanilla decoder
# (App. B.1): (attn1 query, attn1 key/value, attn2 query, attn2 key/value); R = attn1's result.
EXPECTED_DESIGNS = {"a": "QERP", "b": "QPRE", "c": "QEPR", "d": "QPER", "e": "PEQR", "f": "EPQR", "vanilla": "QQRE"}


@pytest.mark.parametrize("design", sorted(EXPECTED_DESIGNS))
def test_decoder_design_feeds_each_attention_the_documented_inputs(design):
    layer = small(decoder_design=design, query="first").decoder[0].eval()
    inputs = {name: torch.randn(2, H * W, 32) for name in "QEP"}
    seen = {}
    layer.attn1.register_forward_hook(lambda m, args, out: seen.update(attn1=args[:2]))
    layer.attn2.register_forward_hook(lambda m, args, out: seen.update(attn2=args[:2]))
    layer.norm1.register_forward_hook(lambda m, args, out: inputs.update(R=out))
    layer(inputs["Q"], inputs["E"], inputs["P"], None, None, None)
    q1, kv1, q2, kv2 = EXPECTED_DESIGNS[design]
    assert seen["attn1"][0] is inputs[q1] and seen["attn1"][1] is inputs[kv1]
    assert seen["attn2"][0] is inputs[q2] and seen["attn2"][1] is inputs[kv2]


@pytest.mark.parametrize("query", ["none", "first", "every"])
def test_query_mode_decides_each_decoder_layers_query(query):
    model = small(query=query, num_decoder_layers=3).eval()
    calls = []
    for layer in model.decoder:
        layer.register_forward_hook(lambda m, args, out: calls.append((args[:3], out)))
    model.encoder[-1].register_forward_hook(lambda m, args, out: calls.append(((None, None, None), out)))
    model(features())
    (_, enc), *layers = calls
    for i, ((q, e, p), _) in enumerate(layers):
        assert e is enc and p is (enc if i == 0 else layers[i - 1][1])
        if query == "every" or (query == "first" and i == 0):
            torch.testing.assert_close(q, model.query_embed[i].expand(2, -1, -1), rtol=0, atol=0)
        else:  # no own table: the layer's input takes the query's place (encoder output for layer 1)
            assert q is p
    n_tables = {"none": 0, "first": 1, "every": 3}[query]
    assert (0 if model.query_embed is None else len(model.query_embed)) == n_tables


# ----------------------------------------------------------------------------- neighbor masked attention
def brute_force_mask(h: int, w: int, kh: int, kw: int) -> torch.Tensor:
    mask = torch.zeros(h * w, h * w, dtype=torch.bool)
    for i, j in itertools.product(range(h), range(w)):
        for di, dj in itertools.product(range(-(kh // 2), kh // 2 + 1), range(-(kw // 2), kw // 2 + 1)):
            if 0 <= i + di < h and 0 <= j + dj < w:
                mask[i * w + j, (i + di) * w + (j + dj)] = True
    return mask


@pytest.mark.parametrize("h, w, kh, kw", [(6, 6, 3, 3), (5, 7, 3, 5), (4, 4, 1, 1), (14, 14, 7, 7), (14, 14, 9, 9)])
def test_neighbor_mask_blocks_exactly_the_window(h, w, kh, kw):
    mask = neighbor_mask(h, w, (kh, kw), torch.device("cpu"))
    assert torch.equal(mask, brute_force_mask(h, w, kh, kw))
    if (h, w, kh) == (14, 14, 7):
        assert int((~mask[7 * 14 + 7]).sum()) == 196 - 49  # a centre token sees 147 keys (notebooks/SOURCES.md §2.4)


def test_masked_keys_and_values_get_no_gradient():
    """Functional check of one attention: its output at a query ignores exactly the blocked tokens."""
    attn = small().encoder[0].attn.eval()
    window = brute_force_mask(H, W, 3, 3)
    query, pos = torch.randn(1, H * W, 32), torch.randn(H * W, 32)
    kv = torch.randn(1, H * W, 32, requires_grad=True)
    for t in (0, 2 * W + 3, H * W - 1):  # corner, inside, corner
        kv.grad = None
        attn(query, kv, pos, neighbor_mask(H, W, (3, 3), torch.device("cpu")))[0, t].sum().backward()
        assert torch.equal(kv.grad[0].abs().sum(-1) > 0, ~window[t])


def test_attention_matches_a_hand_written_reference():
    """softmax((q+pos)Wq ((kv+pos)Wk)^T / sqrt(d) with blocked keys at -inf) (kv Wv), per head, then Wo."""
    model = small()
    attn, pos_embed = model.encoder[0].attn.eval(), model.pos_embed
    pos = pos_embed()
    for i, j in [(0, 0), (2, 5), (5, 1)]:  # cell (i, j) = [col_j ‖ row_i]
        torch.testing.assert_close(pos[i * W + j], torch.cat([pos_embed.col[j], pos_embed.row[i]]))
    query, kv = torch.randn(1, H * W, 32), torch.randn(1, H * W, 32)
    mask = brute_force_mask(H, W, 3, 3)
    wq, wk, wv = attn.mha.in_proj_weight.chunk(3)
    bq, bk, bv = attn.mha.in_proj_bias.chunk(3)
    heads = []
    for h in range(4):
        s = slice(8 * h, 8 * h + 8)
        q = (query[0] + pos) @ wq[s].T + bq[s]
        k = (kv[0] + pos) @ wk[s].T + bk[s]
        v = kv[0] @ wv[s].T + bv[s]
        logits = (q @ k.T / math.sqrt(8)).masked_fill(mask, float("-inf"))
        heads.append(torch.softmax(logits, dim=-1) @ v)
    want = torch.cat(heads, dim=-1) @ attn.mha.out_proj.weight.T + attn.mha.out_proj.bias
    got = attn(query, kv, pos, neighbor_mask(H, W, (3, 3), torch.device("cpu")))
    torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("nma", [(True, True, True), (True, True, False), (False, False, True), (False, True, False)])
def test_attention_weights_are_zero_inside_the_window(nma):
    """Hook every attention of the model, re-run it with weights, check the window where NMA is on."""
    model = small(neighbor_mask=nma).eval()
    window = brute_force_mask(H, W, 3, 3)
    weights = {}

    def grab(name):
        def hook(module, args, kwargs, output):
            kwargs = {**kwargs, "need_weights": True, "average_attn_weights": False}
            weights[name] = module.forward(*args, **kwargs)[1][0]  # (heads, HW, HW)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.MultiheadAttention):
            module.register_forward_hook(grab(name), with_kwargs=True)
    model(features())
    assert len(weights) == 2 + 2 * 2
    for name, wts in weights.items():
        on = nma[0] if name.startswith("encoder") else nma[1] if ".attn1." in name else nma[2]
        inside = wts[:, window]
        assert (inside == 0).all() if on else (inside > 0).all(), name
        assert (wts[:, ~window] > 0).all(), name
        torch.testing.assert_close(wts.sum(-1), torch.ones(wts.shape[:2]))


# ----------------------------------------------------------------------------- feature jittering
def test_eval_is_deterministic_and_ignores_jitter():
    on, off = small(), small(jitter_prob=0.0)
    off.load_state_dict(on.state_dict())
    on.eval(), off.eval()
    x = features()
    torch.testing.assert_close(on(x), on(x), rtol=0, atol=0)
    torch.testing.assert_close(on(x), off(x), rtol=0, atol=0)


def test_training_jitter_changes_the_output():
    on, off = small(dropout=0.0), small(dropout=0.0, jitter_prob=0.0)
    off.load_state_dict(on.state_dict())
    on.train(), off.train()
    x = features()
    torch.testing.assert_close(off(x), off.eval()(x))  # dropout 0, no jitter: train == eval
    assert not torch.allclose(on(x), off(x), atol=1e-3)


def test_jitter_noise_matches_eq3():
    """Noise entering input_proj has std alpha * ||f||_2 / C_in per token (Eq. 3)."""
    alpha, channels = 20.0, 64
    model = small(in_channels=channels, jitter_scale=alpha).train()
    seen = []
    model.input_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    x = features(batch=32, channels=channels)
    x[:16] *= 10  # two groups of token norms: the noise must follow each token's norm
    torch.manual_seed(3)
    model(x)
    tokens = x.flatten(2).transpose(1, 2)                                    # (B, HW, C)
    expected_std = alpha * torch.linalg.norm(tokens, dim=-1) / channels      # (B, HW)
    z = (seen[0] - tokens) / expected_std[..., None]                         # should be N(0, 1)
    for group in (z[:16], z[16:]):
        assert abs(group.mean().item()) < 0.02                               # 36864 samples each
        assert abs(group.std().item() - 1) < 0.02


def test_jitter_probability_is_one_draw_per_batch():
    torch.manual_seed(0)
    x = torch.randn(4, 10, 8)
    jittered = []
    for _ in range(400):
        changed = (feature_jitter(x, 20.0, 0.3) != x).flatten(0, 1).any(-1)  # per token
        assert changed.all() or not changed.any()                          # all tokens or none
        jittered.append(bool(changed.all()))
    assert abs(np.mean(jittered) - 0.3) < 0.08                             # binomial sd 0.023
    assert torch.equal(feature_jitter(x, 20.0, 0.0), x) and torch.equal(feature_jitter(x, 0.0, 1.0), x)


# ----------------------------------------------------------------------------- gradients, baselines, counts
@pytest.mark.parametrize("name, fields", [("uniad", {})] + [("uniad", dict(query=q, decoder_design=d))
                                          for q, d in [("first", "b"), ("none", "vanilla"), ("every", "c"),
                                                       ("every", "d"), ("every", "e"), ("every", "f")]]
                         + [("transformer", {}), ("mlp", {})])
def test_gradient_reaches_every_parameter(name, fields):
    model = small(name, **fields).train()
    x = features(batch=3)
    reconstruction_loss(x, model(x)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_transformer_is_the_vanilla_uniad_config():
    model = small("transformer")
    assert isinstance(model, UniAD)
    c = model.config
    assert (c.query, c.decoder_design, c.neighbor_mask, c.jitter_prob, c.pos_embed) == \
        ("first", "vanilla", (False, False, False), 0.0, True)
    assert model.query_embed.shape == (1, H * W, 32)  # the first decoder layer's query only


def test_mlp_has_no_attention_and_no_spatial_mixing():
    model = small("mlp").eval()
    assert isinstance(model, MLP) and model.pos_embed is None
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())
    x = features()
    y = x.clone()
    y[:, :, 2, 4] += 1.0                                     # change one token
    changed = (model(y) - model(x)).abs().amax(dim=1) > 0    # (B, H, W)
    expected = torch.zeros(2, H, W, dtype=torch.bool)
    expected[:, 2, 4] = True
    assert torch.equal(changed, expected)
    with pytest.raises(ValueError, match="no attention"):
        small("mlp", neighbor_mask=(True, True, True))


def expected_uniad_params(c_in, c, f, n_enc, n_dec, hw, n_queries, h, w) -> int:
    linear = lambda i, o: i * o + o  # noqa: E731
    attn = 4 * c * c + 4 * c         # in-projection 3C×C (+3C) and out-projection C×C (+C)
    ffn = linear(c, f) + linear(f, c)
    ln = 2 * c
    enc = attn + ffn + 2 * ln
    dec = 2 * attn + ffn + 3 * ln
    return (linear(c_in, c) + linear(c, c_in) + n_enc * enc + n_dec * dec + n_queries * hw * c
            + (h + w) * c // 2 + ln)


def test_parameter_counts_from_the_architecture():
    paper = models.create("uniad")
    assert paper.num_parameters() == expected_uniad_params(272, 256, 1024, 4, 4, 196, 4, 14, 14) == 7_717_392
    assert models.create("transformer").num_parameters() == expected_uniad_params(272, 256, 1024, 4, 4, 196, 1, 14, 14)
    quick = models.create("uniad", preset="quick", in_channels=192)
    assert quick.num_parameters() == expected_uniad_params(192, 128, 512, 2, 2, 196, 2, 14, 14)


def test_create_and_unknown_names():
    assert isinstance(models.create("uniad", **SMALL), UniAD)
    assert {"uniad", "mlp", "transformer"} <= set(models.list_models())
    with pytest.raises(ValueError, match="uniad") as err:
        models.create("unaid")
    assert "mlp" in str(err.value) and "transformer" in str(err.value)


# ----------------------------------------------------------------------------- objectives
def test_losses_and_maps_match_their_formulas():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(2, 5, 3, 4))
    r = f + 0.5 * rng.normal(size=f.shape)
    ft, rt = torch.tensor(f), torch.tensor(r)
    mse_map = np.zeros((2, 3, 4))
    nmse_map = np.zeros((2, 3, 4))
    cos_map = np.zeros((2, 3, 4))
    for b, i, j in itertools.product(range(2), range(3), range(4)):
        u, v = f[b, :, i, j], r[b, :, i, j]
        mse_map[b, i, j] = math.sqrt(sum((u - v) ** 2))
        nmse_map[b, i, j] = math.sqrt(sum((u / np.linalg.norm(u) - v / np.linalg.norm(v)) ** 2))
        cos_map[b, i, j] = 1 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    for kind, want in [("mse", mse_map), ("nmse", nmse_map), ("cos", cos_map)]:
        np.testing.assert_allclose(anomaly_map(ft, rt, kind).numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(reconstruction_loss(ft, rt, "mse").item(), ((f - r) ** 2).mean(), rtol=1e-10)
    np.testing.assert_allclose(reconstruction_loss(ft, rt, "nmse").item(), (nmse_map ** 2).mean(), rtol=1e-10)
    np.testing.assert_allclose(loss_fn("cos")(ft, rt).item(), cos_map.mean(), rtol=1e-10)


def test_objectives_over_scales_and_bad_input():
    f = [torch.rand(2, 4, 8, 8), torch.rand(2, 6, 4, 4)]
    r = [x + 0.1 for x in f]
    loss = reconstruction_loss(f, r, "cos")
    torch.testing.assert_close(loss, reconstruction_loss(f[0], r[0], "cos") + reconstruction_loss(f[1], r[1], "cos"))
    maps = anomaly_map(f, r, "cos")
    assert maps.shape == (2, 8, 8)
    coarse = torch.nn.functional.interpolate(anomaly_map(f[1], r[1], "cos")[:, None], size=(8, 8),
                                             mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(maps, (anomaly_map(f[0], r[0], "cos") + coarse) / 2)
    with pytest.raises(ValueError, match="kinds"):
        reconstruction_loss(f[0], r[0], "l1")
    with pytest.raises(ValueError, match="one shape"):
        anomaly_map(f[0], r[1], "mse")
    with pytest.raises(ValueError, match="kinds"):
        loss_fn("huber")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_output_on_cuda():
    """The neighbor mask is built on the input's device; CUDA and CPU agree."""
    model = small().eval()
    x = features()
    want = model(x)
    got = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_recorded_attention_respects_the_neighbour_mask_and_sums_to_one():
    from adnotes.models.uniad import neighbor_mask, recording_attention

    model = models.create("uniad", preset="quick", in_channels=8, feature_size=6, neighbor_size=3, hidden_dim=16,
                   num_heads=2, ffn_dim=32).eval()
    x = torch.randn(2, 8, 6, 6)
    with recording_attention(model) as maps:
        out = model(x)
    assert torch.allclose(out, model(x), atol=1e-5)  # recording changes nothing (up to the fused kernel)
    assert set(maps) == {"encoder.0.attn", "encoder.1.attn", "decoder.0.attn1", "decoder.0.attn2",
                         "decoder.1.attn1", "decoder.1.attn2"}
    blocked = neighbor_mask(6, 6, (3, 3), x.device)  # True = may not attend
    for weights in maps.values():
        assert weights.shape == (2, 36, 36)
        assert torch.allclose(weights.sum(-1), torch.ones(2, 36), atol=1e-5)
        assert weights[:, blocked].abs().max() == 0
    assert all(not m.record for m in model.modules() if hasattr(m, "record"))
