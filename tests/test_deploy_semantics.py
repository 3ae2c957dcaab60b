"""The semantics training, the memory model and the integer export share (docs/design.md §3.6, §6.4):
the skip path of a residual block adds the block input as its first layer holds it, the global pool
reads the last feature map in the classifier's input format, a residual add is fused into the layer
before it, every tensor is stored at its readers' format, and the logits are float32."""
import copy
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import build_model
from models.blocks import first_mixed_layer, global_pool_as_read
from models.dual import apply_dual_mapping, to_dual_layer
from models.layers import MixedPrecisionConv2d, MixedPrecisionLinear
from models.mixture import mix_inputs
from models.network import mixed_layers, set_mode
from tensor_analysis.graph import analyze_model, analyze_network
from tensor_analysis.latency import fixed_operator_ms, layer_latency_ms
from tensor_analysis.memory import layer_bytes, mapping_live_bytes, peak_ram_bytes
from tensor_analysis.prediction import predict_network
from tensor_analysis.profiles import load_profile

SPEC = dict(num_classes=10, width_mult=0.35, input_size=16)


def tiny(precisions=("int4",), **kw):
    torch.manual_seed(0)
    model = build_model("mobilenetv2", precisions=list(precisions), **SPEC, **kw)
    model.eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the branch is not ~0
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def residual_blocks(model):
    return [m for m in model.features if getattr(m, "use_res_connect", False)]


# ----------------------------------------------------------------------------------------------------
# A: the skip path
# ----------------------------------------------------------------------------------------------------
def test_skip_path_adds_the_first_layers_quantized_input_fixed():
    model = tiny(("int4",))
    block = residual_blocks(model)[0]
    first = first_mixed_layer(block.conv)
    x = torch.randn(2, block.conv[0][0].in_channels, 4, 4) * 3
    with torch.no_grad():
        got = block(x)
        branch = block.conv(x)
        want = first.quantize_input(x, "int4") + branch
    assert torch.equal(got, want)
    assert not torch.allclose(got, x + branch)  # the float input would give another result
    # Q_int4 with the layer's signed clip: at most 7 levels per side
    skip = got - branch
    assert len(torch.unique(torch.round(skip / first.input_grid("int4")[3]))) <= 15


def test_skip_path_adds_the_composite_mixture_with_the_forward_pass_pi():
    model = tiny(("fp32", "int8", "int4", "int2"))
    set_mode(model, "composite")
    block = residual_blocks(model)[0]
    first = first_mixed_layer(block.conv)
    x = torch.randn(2, block.conv[0][0].in_channels, 4, 4) * 3
    with torch.no_grad():
        got = block(x)
        branch = block.conv(x)
        mixed = mix_inputs(x, first.probs(), first.act_clip, first.precisions, first.signed_input)
    assert torch.equal(got, mixed + branch)
    # with Gumbel sampling the skip uses the very sample the layer's op used: one draw per forward
    model.train()
    for _, layer in mixed_layers(model):
        layer.gumbel = True
    draws = []
    original = first.probs

    def recording_probs(*args, **kwargs):
        pi = original(*args, **kwargs)
        draws.append(pi)
        return pi
    first.probs = recording_probs
    out = block(x)
    assert len(draws) == 1
    out.sum().backward()
    assert first.alpha.grad is not None and first.act_clip.grad is not None


def test_stored_input_of_split_layers():
    x = torch.randn(2, 8, 5, 5) * 3
    dw = MixedPrecisionConv2d(8, 8, 3, padding=1, groups=8, precisions=["int8", "int4"], signed_input=True)
    split = to_dual_layer(dw, ["m7:int4[0:3]+m4:int8[3:8]"])
    with torch.no_grad():
        held = split.stored_input(x)
        assert torch.equal(held[:, :3], split.quantize_input(x[:, :3], "int4"))
        assert torch.equal(held[:, 3:], split.quantize_input(x[:, 3:], "int8"))
    pw = MixedPrecisionConv2d(8, 6, 1, precisions=["fp16", "int8", "int2"], signed_input=True)
    split = to_dual_layer(pw, ["m7:int2[0:2]+m4:int8[2:6]"])
    with torch.no_grad():  # a layer reading whole copies keeps its widest part's copy
        assert torch.equal(split.stored_input(x), split.quantize_input(x, "int8"))
    assert split.stored_precision() == "int8"
    # searchable: the π-mixture of each option's stored input
    searchable = to_dual_layer(pw, ["int2", "m7:int2[0:2]+m4:int8[2:6]", "m4:fp16[0:6]"], alpha=[0.3, -0.2, 0.5])
    with torch.no_grad():
        pi = searchable.probs()
        want = (pi[0] * searchable.quantize_input(x, "int2") + pi[1] * searchable.quantize_input(x, "int8")
                + pi[2] * searchable.quantize_input(x, "fp16"))
        assert torch.allclose(searchable.stored_input(x), want, atol=1e-6)
    searchable_dw = to_dual_layer(dw, ["int8", "m7:int4[0:3]+m4:int8[3:8]"], alpha=[0.1, 0.4])
    with torch.no_grad():
        pi = searchable_dw.probs()
        want = searchable_dw.quantize_input(x, "int8").clone()
        want[:, :3] = pi[0] * want[:, :3] + pi[1] * searchable_dw.quantize_input(x[:, :3], "int4")
        assert torch.allclose(searchable_dw.stored_input(x), want, atol=1e-6)


def test_skip_path_of_a_block_whose_first_layer_is_split_reads_the_widest_copy():
    model = tiny(("int8", "int4"))
    block = residual_blocks(model)[0]
    name = next(n for n, m in mixed_layers(model) if m is first_mixed_layer(block.conv))
    c = first_mixed_layer(block.conv).out_channels
    mapping = {n: "int4" for n, _ in mixed_layers(model)}
    mapping[name] = f"m7:int4[0:{c // 2}]+m4:int8[{c // 2}:{c}]"
    apply_dual_mapping(model, mapping)
    first = first_mixed_layer(block.conv)  # replaced in place by the fixed split form
    x = torch.randn(2, first.in_channels, 4, 4) * 3
    with torch.no_grad():
        assert torch.equal(block(x), first.quantize_input(x, "int8") + block.conv(x))


# ----------------------------------------------------------------------------------------------------
# D: the global pool
# ----------------------------------------------------------------------------------------------------
def exact_pooled_codes(codes: np.ndarray) -> np.ndarray:
    """round-half-even of Σq/(H·W) in exact rational arithmetic, per (image, channel)."""
    n, c, h, w = codes.shape
    out = np.zeros((n, c), dtype=np.int64)
    for i in range(n):
        for j in range(c):
            out[i, j] = round(Fraction(int(codes[i, j].sum()), h * w))  # Python rounds ties to even
    return out


@pytest.mark.parametrize("precision", ["int8", "int4", "int2"])
def test_pool_reads_the_classifier_format_and_rounds_half_to_even(precision):
    model = tiny((precision,))
    cls = first_mixed_layer(model.classifier)
    lo, a, inv_step, step = cls.input_grid(precision)
    x = torch.randn(3, model.last_channel, 4, 4) * a * 0.6 + a / 3
    with torch.no_grad():
        pooled = global_pool_as_read(x, cls)
        codes = torch.round(cls.quantize_input(x, precision) * inv_step).numpy().astype(np.int64)
    want = exact_pooled_codes(codes)
    assert (np.asarray(codes.reshape(3, -1, 16).sum(-1) % 16) == 8).any()  # there are ties to break
    assert torch.equal(pooled, torch.from_numpy(want).float() * step)
    # the classifier's own quantizer keeps the pooled codes unchanged
    with torch.no_grad():
        assert torch.equal(cls.quantize_input(pooled, precision), pooled)
    # and the model computes exactly this
    with torch.no_grad():
        feats = model.features(torch.randn(2, 3, 16, 16))
        assert torch.equal(model.classifier(global_pool_as_read(feats, cls)),
                           model.classifier(torch.from_numpy(exact_pooled_codes(
                               torch.round(cls.quantize_input(feats, precision) * inv_step).numpy())).float() * step))


def test_pool_of_float_and_searching_classifiers_is_the_mean_of_the_stored_input():
    model = tiny(("fp32", "fp16", "int8"))
    cls = first_mixed_layer(model.classifier)
    x = torch.randn(2, model.last_channel, 4, 4)
    set_mode(model, "composite")
    with torch.no_grad():
        assert torch.allclose(global_pool_as_read(x, cls), cls.stored_input(x).mean((2, 3)))
    cls.set_precision("fp16")
    with torch.no_grad():
        assert torch.equal(global_pool_as_read(x, cls), x.half().float().mean((2, 3)))


def test_pool_snapping_passes_gradients_straight_through():
    model = tiny(("int4",))
    cls = first_mixed_layer(model.classifier)
    x = (torch.rand(2, model.last_channel, 4, 4) * 2).requires_grad_()
    global_pool_as_read(x, cls).sum().backward()
    inside = (x > 0) & (x < cls.input_grid("int4")[1])
    assert torch.allclose(x.grad[inside], torch.full_like(x.grad[inside], 1 / 16), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# B, C, E: the memory model
# ----------------------------------------------------------------------------------------------------
class ResidualNet(nn.Module):
    """stem 3→4 (4×4, ReLU6) · block: expand 4→8 (ReLU6), project 8→4, + stem output · block 2
    input read by expand 4→8 · pool · linear 8→5."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(MixedPrecisionConv2d(3, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.ReLU6())
        self.expand = nn.Sequential(MixedPrecisionConv2d(4, 8, 1), nn.BatchNorm2d(8), nn.ReLU6())
        self.project = nn.Sequential(MixedPrecisionConv2d(8, 4, 1), nn.BatchNorm2d(4))
        self.expand2 = nn.Sequential(MixedPrecisionConv2d(4, 8, 1), nn.BatchNorm2d(8), nn.ReLU6())
        self.fc = MixedPrecisionLinear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.expand(x))
        x = self.expand2(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_fused_add_and_storage_rule_by_hand():
    a = analyze_model(ResidualNet(), (3, 4, 4))
    assert [(o.name, o.op, o.fused) for o in a.operators] == [
        ("stem.0", "conv", []), ("expand.0", "pwconv", []), ("project.0", "pwconv", ["add"]),
        ("expand2.0", "pwconv", []), ("pool", "pool", []), ("fc", "linear", [])]
    m = {"stem.0": "int8", "expand.0": "int4", "project.0": "int8", "expand2.0": "fp16", "fc": "int2"}
    # X (stem output, 64 values) is read by expand (int4) and by the add fused into project: stored
    # int4 (32 B), and the add reads that copy. (The old rule also weighed the add's output format,
    # fp16 here, and stored X at 128 B.) E (128 values) int8 for project: 128 B. Y (64) fp16 for
    # expand2: 128 B. F (128) → the pool → the classifier reads int2: F 32 B, pooled 2 B. Logits 5 × 4 B.
    live = [b for _, b in mapping_live_bytes(a, m)]
    assert live == [48 + 32,            # stem: image (int8) + X
                    32 + 128,           # expand: X + E
                    128 + 32 + 128,     # project + add: E + X kept for the skip + Y, no pre-add tensor
                    128 + 32,           # expand2: Y + F
                    32 + 2,             # pool: F + pooled
                    2 + 20]             # classifier: pooled + float32 logits
    assert peak_ram_bytes(a, m) == 288
    # the filter's per-layer view: everything at the layer's precision but the float32 logits
    b = layer_bytes(a, a.layer("fc"), "int8")
    assert (b["input"], b["output"], b["live"]) == (8, 20, 28)
    b = layer_bytes(a, a.layer("project.0"), "int4")
    assert (b["input"], b["kept"], b["output"], b["live"]) == (64, 32, 32, 128)


def test_fused_add_moves_its_latency_into_the_layer_and_keeps_the_total():
    a = analyze_model(ResidualNet(), (3, 4, 4))
    project = a.layer("project.0")
    bare = copy.copy(project)
    bare.fused = []
    unfused_add = copy.copy(project)  # the add as an operator of its own: same output size
    unfused_add.op, unfused_add.is_layer, unfused_add.fused = "add", False, []
    add_ms = fixed_operator_ms(unfused_add, load_profile("stm32h747"))
    for p in ("fp32", "fp16", "int8", "int4", "int2"):
        assert layer_latency_ms(project, p, "stm32h747") == pytest.approx(
            layer_latency_ms(bare, p, "stm32h747") + add_ms, rel=1e-9)
    totals = predict_network(a, {n: "int8" for n in a.layer_names}, "stm32h747")["totals"]
    assert totals["latency_ms"] == pytest.approx(
        totals["fixed_ms"] + sum(layer_latency_ms(o, "int8", "stm32h747") for o in a.layers))


def test_mobilenetv2_has_no_add_operators_and_float32_logits():
    a = analyze_network({"type": "mobilenetv2", **SPEC})
    assert not any(o.op == "add" for o in a.operators)
    assert sum(o.fused == ["add"] for o in a.layers) == len(residual_blocks(tiny())) == 11
    fc = a.layer("classifier.1")
    live = dict((o.name, b) for o, b in mapping_live_bytes(a, {n: "int8" for n in a.layer_names}))
    assert live["classifier.1"] == fc.in_channels + 4 * fc.out_channels
    model = tiny(("int2",))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 16)).dtype == torch.float32
