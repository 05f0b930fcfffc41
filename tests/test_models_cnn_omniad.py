"""CNN baseline (UniAD App. B.1) and Omni-AD: shapes, architecture facts, and formulas checked
against re-implementations written here (loops, numpy, scipy), not against the code's own output."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from adnotes.models import create
from adnotes.models.cnn import CNN, BasicBlock, CNNConfig
from adnotes.models.omniad import (GlobalBranch, LocalBranch, OmniAD, OmniADConfig, OmniBlock, PatchExpand,
                                   branch_probe, feature_jitter, multiscale_cosine_map, omniad_loss, tokens_to_map)

SMALL_CNN = dict(in_channels=12, hidden=16, depths=(1, 2, 1, 1))
# the paper's teacher (ResNet-34 layers 1-3: 64/128/256 channels) with a shrunk decoder
SMALL_PAPER = OmniADConfig(widths=(64, 32, 16, 8), depths=(1, 2, 1, 1), heads=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def teacher_maps(cfg: OmniADConfig, image_size: int, batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, generator=g) for shape in cfg.feature_shapes(image_size)]


def randomize_zero_inits(model: nn.Module) -> None:
    """Tokens and post-softmax biases start at zero (official init); with T_q = 0 the gradient of
    Linear_q's weight, dL/dQ T_q^T, is exactly zero at init. Give them values to test the math."""
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in ("query_tokens", "kv_tokens", "bias_a", "bias_b"):
            with torch.no_grad():
                p.normal_(0, 0.5)


def assert_every_parameter_learns(model: nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, f"no gradient reaches {dead}"


# ----------------------------------------------------------------------------- CNN baseline
def test_cnn_reconstructs_the_input_shape_via_registry():
    model = create("cnn", **SMALL_CNN)
    x = torch.randn(2, 12, 9, 7)
    assert model(x).shape == x.shape
    with pytest.raises(ValueError, match="in_channels"):
        model(torch.randn(2, 11, 9, 7))


def test_cnn_default_is_resnet34_body_with_widths_c_half_half_c():
    model = CNN(in_channels=272)
    assert [len(stage) for stage in model.stages] == [3, 4, 6, 3]  # ResNet-34
    assert all(isinstance(b, BasicBlock) for stage in model.stages for b in stage)
    widths = [stage[-1].conv2.out_channels for stage in model.stages]
    assert widths == [256, 128, 128, 256]  # C, C/2, C/2, C with C = 256 (App. B.1)
    for conv, c_in, c_out in ((model.reduce, 272, 256), (model.expand, 256, 272)):  # App. B.3, 1x1 convs
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (c_in, c_out, (1, 1))
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in model.modules())  # stem removed
    assert all(m.stride == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))


def test_cnn_keeps_the_spatial_size_at_every_stage():
    model = CNN(CNNConfig.quick(in_channels=12)).eval()
    seen = []
    for stage in model.stages:
        stage.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape)))
    model(torch.randn(1, 12, 11, 13))
    assert seen == [(1, 128, 11, 13), (1, 64, 11, 13), (1, 64, 11, 13), (1, 128, 11, 13)]


def test_cnn_gradient_reaches_every_parameter():
    model = CNN(**SMALL_CNN)
    x = torch.randn(2, 12, 6, 6)
    assert_every_parameter_learns(model, F.mse_loss(model(x), x))


# ----------------------------------------------------------------------------- Omni-AD: shapes
@pytest.mark.parametrize("cfg", [SMALL_PAPER, OmniADConfig.quick()], ids=["paper-small", "quick"])
@pytest.mark.parametrize("image_size", [224, 256])
def test_omniad_reconstructs_each_teacher_map(cfg, image_size):
    model = create("omniad", **vars(cfg)).eval()
    maps = teacher_maps(cfg, image_size, batch=1)
    assert [m.shape[-1] for m in maps] == [image_size // 4, image_size // 8, image_size // 16]
    bottleneck = []
    model.neck.register_forward_hook(lambda mod, inp, out: bottleneck.append(tuple(out.shape)))
    out = model(maps)
    assert [o.shape for o in out] == [m.shape for m in maps]
    assert bottleneck == [(1, cfg.widths[0], image_size // 32, image_size // 32)]  # 8 x 8 at 256² (§1.3)


def test_omniad_rejects_maps_that_do_not_fit():
    model = OmniAD(OmniADConfig.quick())
    with pytest.raises(ValueError, match="in_channels"):
        model(teacher_maps(SMALL_PAPER, 224))
    with pytest.raises(ValueError, match="multiples of 32"):
        model([torch.randn(1, 24, 50, 50), torch.randn(1, 40, 25, 25), torch.randn(1, 112, 13, 13)])
    with pytest.raises(ValueError, match="square"):
        OmniAD(num_tokens=50)


def test_omniad_paper_parameter_counts_match_a_hand_count_of_the_official_layers(monkeypatch):
    """notebooks/SOURCES.md §1.9: the official design counted by hand from its layer list (§1.3-1.4),
    per component. The official attention MLPs are not parameters (quirk Q1); ours are registered,
    which is the whole gap between our paper preset (27.99 M) and the official ~21.8 M."""
    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    def conv(c_in, c_out, k, bias):  # a dense k x k conv
        return c_in * c_out * k * k + (c_out if bias else 0)

    def linear(c_in, c_out, bias=True):
        return c_in * c_out + (c_out if bias else 0)

    def bn(c):
        return 2 * c

    def bottleneck(c_in, planes=128, project=False):  # timm Bottleneck, expansion 4, bias-free convs
        out = 4 * planes
        return (conv(c_in, planes, 1, False) + bn(planes) + conv(planes, planes, 3, False) + bn(planes)
                + conv(planes, out, 1, False) + bn(out) + (conv(c_in, out, 1, False) + bn(out) if project else 0))

    def omni_block(c, heads=8, tokens=64):
        tokens_and_bias = 2 * tokens * c + 2 * heads * tokens  # T_q, T_kv; pe2 (h, 64, 1), pe1 (h, 1, 64)
        projections = 2 * (linear(c, c) + linear(c, 2 * c))  # A: q from T_q, kv from x; B: q from m, kv from T_kv
        depthwise = lambda k: c * k * k + c  # groups = C, with bias
        local = (depthwise(3) + conv(c, c, 1, True) + depthwise(5) + conv(c, c, 1, True)
                 + conv(2 * c, c, 1, True))  # InstanceNorms have no parameters
        fusion = 2 * linear(c, c)
        return tokens_and_bias + projections + local + fusion

    widths, depths = (512, 256, 128, 64), (3, 9, 9, 7)
    hand_neck = (conv(64, 128, 3, False) + bn(128) + conv(128, 256, 3, False) + bn(256)  # 3x3 stride-2 convs
                 + conv(128, 128, 1, True) + bn(128) + conv(256, 256, 1, True) + bn(256)  # 1x1 laterals
                 + conv(256, 256, 1, True) + bn(256)  # 1x1 mix
                 + bottleneck(256, project=True) + 2 * bottleneck(512))
    hand_expand = sum(linear(c, 2 * c, bias=False) + 2 * (c // 2) for c in widths[:-1])  # Linear + LayerNorm
    hand_blocks = sum(d * omni_block(w) for w, d in zip(widths, depths))
    hand_mlps = sum(d * 2 * 2 * linear(w, w) for w, d in zip(widths, depths))  # 2 attentions x (Linear, Linear)

    monkeypatch.setattr(OmniAD, "_init_weights", lambda self: None)  # only shapes matter here
    with torch.device("meta"):  # no memory
        official, registered = OmniAD(fresh_attention_mlp=True), OmniAD()
    blocks = nn.ModuleList(b for b in official.modules() if isinstance(b, OmniBlock))
    expands = nn.ModuleList(b for b in official.modules() if isinstance(b, PatchExpand))
    assert len(blocks) == 28 and len(expands) == 3
    assert (count(official.neck), count(expands), count(blocks)) == (hand_neck, hand_expand, hand_blocks)
    assert count(official) == hand_neck + hand_expand + hand_blocks
    assert round(count(official) / 1e6, 1) == 21.8  # the official design's count
    assert count(registered) - count(official) == hand_mlps


# ----------------------------------------------------------------------------- Omni-AD: behaviour
def test_jitter_only_in_training_and_eval_is_deterministic():
    cfg = OmniADConfig.quick()
    maps = teacher_maps(cfg, 128)
    model = OmniAD(cfg)
    model.train()
    a, b = model(maps), model(maps)
    assert not torch.allclose(a[0], b[0])  # jitter (the only randomness) differs per call
    model.eval()
    a, b = model(maps), model(maps)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    model.config.jitter_scale = 0.0
    model.train()
    a, b = model(maps), model(maps)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_feature_jitter_is_gaussian_with_scale_times_norm_over_channels():
    torch.manual_seed(0)
    x = torch.randn(4, 32, 16, 16) * 3
    noise = feature_jitter(x, 20.0) - x
    unit = noise / (x.norm(dim=1, keepdim=True) / 32)  # should be N(0, 20²)
    assert abs(unit.mean().item()) < 0.5 and abs(unit.std().item() - 20) < 0.5


def test_fresh_attention_mlp_reproduces_the_official_nondeterminism():
    cfg = OmniADConfig.quick(fresh_attention_mlp=True)
    model = OmniAD(cfg).eval()
    assert not any("mlp_" in name for name, _ in model.named_parameters())
    maps = teacher_maps(cfg, 128)
    assert not torch.allclose(model(maps)[0], model(maps)[0])  # §1.5 Q1: new random MLP per call


def test_omniad_gradient_reaches_every_parameter():
    """Catches the official Q1 (attention MLP built in forward): all MLP weights must learn here."""
    cfg = OmniADConfig.quick()
    model = OmniAD(cfg).train()
    randomize_zero_inits(model)
    maps = teacher_maps(cfg, 224, batch=1)
    names = [n for n, _ in model.named_parameters()]
    mlp_weights = [n for n in names if ".mlp_a.fc" in n or ".mlp_b.fc" in n]
    assert len(mlp_weights) == 4 * 2 * 2 * 2  # blocks x MLPs x Linears x (weight, bias)
    assert_every_parameter_learns(model, omniad_loss(maps, model(maps)))


def test_local_branch_convs_are_depthwise_then_pointwise():
    model = OmniAD(SMALL_PAPER)
    branches = [m for m in model.modules() if isinstance(m, LocalBranch)]
    assert len(branches) == sum(SMALL_PAPER.depths)
    for branch in branches:
        for conv, k in ((branch.conv3, 3), (branch.conv5, 5)):
            dw, pw = conv[0], conv[3]
            c = dw.in_channels
            assert dw.groups == c == dw.out_channels and dw.kernel_size == (k, k)
            assert pw.groups == 1 and pw.kernel_size == (1, 1)
            assert isinstance(conv[1], nn.InstanceNorm2d) and not conv[1].affine
        assert branch.merge[0].in_channels == 2 * branch.merge[0].out_channels


@pytest.mark.parametrize("size", [(7, 7), (8, 8), (14, 16), (56, 56)])
def test_tokens_to_map_is_nearest_on_a_row_major_grid(size):
    tokens = torch.randn(2, 64, 5)
    out = tokens_to_map(tokens, size)
    h, w = size
    expected = torch.empty(2, h, w, 5)
    for i in range(h):
        for j in range(w):  # PyTorch "nearest": source index floor(dst * in / out)
            expected[:, i, j] = tokens[:, (i * 8 // h) * 8 + (j * 8 // w)]
    assert torch.equal(out, expected)


def reference_attention(q, k, v, heads, bias):
    """q (N_q, C), k and v (N_k, C), bias (heads, N_q or 1, N_k or 1) -> (N_q, C), head by head."""
    d = q.shape[1] // heads
    outs = []
    for i in range(heads):
        hd = slice(i * d, (i + 1) * d)
        probs = torch.softmax(q[:, hd] @ k[:, hd].T / math.sqrt(d), dim=-1) + bias[i]  # bias AFTER softmax
        outs.append(probs @ v[:, hd])
    return torch.cat(outs, dim=1)


def reference_global_branch(gb: GlobalBranch, x: torch.Tensor) -> torch.Tensor:
    """§1.4 written out sample by sample."""
    b, h, w, c = x.shape
    side = math.isqrt(gb.query_tokens.shape[1])
    rows, cols = [i * side // h for i in range(h)], [j * side // w for j in range(w)]  # nearest
    out = torch.empty_like(x)
    for s in range(b):
        kv = gb.kv_a(x[s].reshape(h * w, c))
        a = reference_attention(gb.q_a(gb.query_tokens[0]), kv[:, :c], kv[:, c:], gb.heads, gb.bias_a[0])
        a = gb.mlp_a.fc2(F.silu(gb.mlp_a.fc1(a)))  # (N, C)
        m = x[s] + a.reshape(side, side, c)[rows][:, cols]  # (H, W, C)
        kv = gb.kv_b(gb.kv_tokens[0])
        o = reference_attention(gb.q_b(m.reshape(h * w, c)), kv[:, :c], kv[:, c:], gb.heads, gb.bias_b[0])
        o = gb.mlp_b.fc2(F.silu(gb.mlp_b.fc1(o)))  # (HW, C)
        out[s] = o.reshape(h, w, c) + m + x[s]
    return out


@pytest.mark.parametrize("hw", [(7, 7), (8, 8), (10, 12)])
def test_global_branch_matches_the_spec_formula(hw):
    gb = GlobalBranch(dim=16, heads=4, num_tokens=64)
    randomize_zero_inits(gb)
    for p in gb.parameters():  # make every layer matter
        if p.ndim == 2:
            nn.init.normal_(p, 0, 0.3)
    x = torch.randn(2, *hw, 16)
    torch.testing.assert_close(gb(x), reference_global_branch(gb, x), rtol=1e-4, atol=1e-5)


def test_omni_block_fusion_matches_the_spec_formula():
    block = OmniBlock(dim=8, heads=2, num_tokens=16)
    x = torch.randn(2, 6, 5, 8)
    y = block.global_branch(x) + block.local_branch(x)
    y = block.fc1(y)
    mean, var = y.mean(dim=(1, 2), keepdim=True), y.var(dim=(1, 2), unbiased=False, keepdim=True)
    expected = x + block.fc2(F.silu((y - mean) / torch.sqrt(var + 1e-5)))  # InstanceNorm per channel
    torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)


def test_patch_expand_is_a_pixel_shuffle_of_the_linear_output():
    pe = PatchExpand(dim=6, out_dim=3)
    x = torch.randn(2, 3, 4, 6)
    z = pe.expand(x)  # (B, H, W, 4 * 3), channels ordered (p1, p2, c)
    expected = torch.empty(2, 6, 8, 3)
    for p1 in range(2):
        for p2 in range(2):
            expected[:, p1::2, p2::2] = z[..., (2 * p1 + p2) * 3:(2 * p1 + p2 + 1) * 3]
    torch.testing.assert_close(pe(x), F.layer_norm(expected, (3,)), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- loss and anomaly map
def pairs(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, 4, 8, 8), (2, 6, 4, 4), (2, 8, 2, 2)]
    teacher = [torch.randn(s, generator=g) for s in shapes]
    student = [t + 0.7 * torch.randn(t.shape, generator=g) for t in teacher]
    return teacher, student


def test_omniad_loss_is_the_sum_over_scales_of_the_mse():
    teacher, student = pairs()
    expected = sum(np.mean((s.numpy() - t.numpy()) ** 2) for t, s in zip(teacher, student))
    assert omniad_loss(teacher, student).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="pair up"):
        omniad_loss(teacher, student[:2])


def test_multiscale_cosine_map_matches_numpy_and_scipy():
    teacher, student = pairs()
    size = 40
    per_scale = []
    for t, s in zip(teacher, student):
        t, s = t.double().numpy(), s.double().numpy()
        cos = (t * s).sum(1) / (np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1))  # (B, h, w)
        h = cos.shape[-1]
        grid = np.arange(size) * (h - 1) / (size - 1)  # bilinear, align_corners=True
        rows, cols = np.meshgrid(grid, grid, indexing="ij")
        per_scale.append([ndimage.map_coordinates(1 - c, [rows, cols], order=1) for c in cos])
    mean = np.mean(per_scale, axis=0)  # (B, size, size)
    expected = np.stack([ndimage.gaussian_filter(m, sigma=4) for m in mean])
    amap = multiscale_cosine_map(teacher, student, size).numpy()
    assert amap.shape == (2, size, size)
    np.testing.assert_allclose(amap[:, 16:-16, 16:-16], expected[:, 16:-16, 16:-16], atol=1e-5)  # interior
    np.testing.assert_allclose(amap, expected, atol=1e-5)  # scipy's reflect border too
    unsmoothed = multiscale_cosine_map(teacher, student, size, sigma=0).numpy()
    np.testing.assert_allclose(unsmoothed, mean, atol=1e-5)


# ----------------------------------------------------------------------------- branch probe
def block_output(block: OmniBlock, x: torch.Tensor, g: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """The Omni-block fusion (§1.4) written out, with the branch outputs g and l given."""
    y = block.fc1(g + l)
    mean, var = y.mean(dim=(1, 2), keepdim=True), y.var(dim=(1, 2), unbiased=False, keepdim=True)
    return x + block.fc2(F.silu((y - mean) / torch.sqrt(var + 1e-5)))


@pytest.mark.parametrize("drop", [None, "global", "attention", "local"])
def test_branch_probe_records_and_drops_as_the_fusion_formula(drop):
    block = OmniBlock(dim=8, heads=2, num_tokens=16).eval()
    randomize_zero_inits(block)
    x = torch.randn(2, 6, 5, 8)
    g, l = block.global_branch(x), block.local_branch(x)
    with branch_probe(block, drop=drop) as seen:
        out = block(x)
    assert set(seen) == {""} and set(seen[""]) == {"input", "global", "local", "output"}
    torch.testing.assert_close(seen[""]["output"], out)
    torch.testing.assert_close(seen[""]["input"], x)
    torch.testing.assert_close(seen[""]["global"], g)  # recorded as computed, before the drop
    torch.testing.assert_close(seen[""]["local"], l)
    g_used = {"global": torch.zeros_like(g), "attention": 2 * x}.get(drop, g)
    l_used = torch.zeros_like(l) if drop == "local" else l
    torch.testing.assert_close(out, block_output(block, x, g_used, l_used), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(block(x), block_output(block, x, g, l), rtol=1e-4, atol=1e-5)  # hooks removed


def test_branch_probe_names_every_block_of_a_model_and_can_skip_recording():
    cfg = OmniADConfig.quick()
    model = OmniAD(cfg).eval()
    maps = teacher_maps(cfg, 64, batch=1)
    with branch_probe(model) as seen:
        plain = model(maps)
    assert sorted(seen) == [f"stages.{i}.1" for i in range(4)]  # stage = (PatchExpand or Identity, block)
    assert [seen[f"stages.{i}.1"]["local"].shape[1:] for i in range(4)] == [(2, 2, 128), (4, 4, 64), (8, 8, 32),
                                                                           (16, 16, 16)]
    with branch_probe(model, drop="local", record=False) as seen:
        dropped = model(maps)
    assert seen == {} and not torch.allclose(dropped[0], plain[0])
    with pytest.raises(ValueError, match="drop must be one of"):
        with branch_probe(model, drop="both"):
            pass
