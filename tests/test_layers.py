"""Mixed-precision layers and the whole-network helpers (docs/design.md §3): composite = exact = fixed when
π is one-hot, every search parameter gets a gradient, state_dict round trips, and bad input names the
layer and what is allowed."""
import re

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.layers import SEED_ALPHA_BIAS, MixedPrecisionConv2d, MixedPrecisionLinear
from models.network import (allowed_precisions, apply_mapping, arch_parameters, calibrate_activation_clips,
                            current_mapping, derive_mapping, mixed_layers, restrict_precisions, set_mode,
                            set_temperature, weight_parameters)
from models.precisions import PRECISION_ORDER
from models.quantizers import quantize_activation_pact, quantize_fp16, quantize_weight_dorefa

TINY = dict(width_mult=0.1, input_size=16, num_classes=5, dropout=0.0)


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("mobilenetv2", **{**TINY, **kw})


def images(n=4, size=16, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def set_one_hot(model, precision):
    for _, layer in mixed_layers(model):
        with torch.no_grad():
            layer.alpha.fill_(-1e4)
            layer.alpha[layer.precisions.index(precision)] = 1e4  # softmax is exactly one-hot


# -- composite = exact = fixed ----------------------------------------------------------------------
def test_one_hot_composite_exact_and_fixed_agree_at_every_precision():
    model = tiny_model()
    x = images()
    calibrate_activation_clips(model, x)
    model.eval()  # BN on running statistics, so the three passes see identical normalisation
    with torch.no_grad():
        for p in PRECISION_ORDER:
            set_one_hot(model, p)
            outs = {}
            for mode in ("composite", "exact"):
                set_mode(model, mode)
                outs[mode] = model(x)
            apply_mapping(model, {name: p for name, _ in mixed_layers(model)})
            outs["fixed"] = model(x)
            assert torch.allclose(outs["composite"], outs["fixed"], rtol=1e-5, atol=1e-6), p
            assert torch.allclose(outs["exact"], outs["fixed"], rtol=1e-5, atol=1e-6), p
            set_mode(model, "composite")


@pytest.mark.parametrize("precision,bits", [("int8", 8), ("int4", 4), ("int2", 2), ("fp16", None)])
def test_fixed_layer_computes_the_quantized_op_by_hand(precision, bits):
    """One layer at a fixed precision is the conv of the quantized input with the quantized weight:
    DoReFa's grid point of each weight times its output channel's least-squares scale ⟨w,q⟩/⟨q,q⟩."""
    torch.manual_seed(0)
    layer = MixedPrecisionConv2d(4, 6, 3, padding=1, signed_input=True, name="probe")
    layer.act_clip.data.fill_(1.5)
    x = torch.randn(2, 4, 5, 5)
    layer.set_precision(precision)
    w = layer.weight
    if bits:
        q = quantize_weight_dorefa(w, bits)
        scale = (w * q).sum(dim=(1, 2, 3)) / (q * q).sum(dim=(1, 2, 3))
        wq = q * scale.view(-1, 1, 1, 1)
        xq = quantize_activation_pact(x, torch.tensor(1.5), bits, signed=True)
    else:
        wq, xq = quantize_fp16(w), quantize_fp16(x)
    assert torch.allclose(layer(x), F.conv2d(xq, wq, padding=1), atol=1e-5)
    if bits:
        # a coarser grid never inflates a channel: ‖s·q‖ ≤ ‖w‖, and no other scale is closer to w
        assert (wq.flatten(1).norm(dim=1) <= w.flatten(1).norm(dim=1) + 1e-6).all()
        error = (wq - w).flatten(1).norm(dim=1)
        for factor in (0.95, 1.05):
            assert ((factor * wq - w).flatten(1).norm(dim=1) > error).all()


# -- gradients ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["composite", "exact"])
def test_one_backward_reaches_every_alpha_clip_and_weight(mode):
    model = tiny_model(seed=3)
    x = images(seed=4)
    calibrate_activation_clips(model, x, percentile=90.0)  # some inputs beyond every clip
    set_mode(model, mode)
    model.train()
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    for name, layer in mixed_layers(model):
        for what, p in (("alpha", layer.alpha), ("act_clip", layer.act_clip), ("weight", layer.weight)):
            assert p.grad is not None, f"{name}.{what} got no gradient"
            if what == "weight":
                assert p.grad.abs().sum() > 0, f"{name}.weight has an all-zero gradient"
            else:
                assert (p.grad != 0).all(), f"{name}.{what} has a zero entry: {p.grad}"


def test_every_precision_trains_the_shared_weight():
    for p in PRECISION_ORDER:
        torch.manual_seed(0)
        layer = MixedPrecisionLinear(8, 3, name="probe")
        layer.set_precision(p)
        layer(torch.rand(5, 8) * 6).sum().backward()  # inputs across the whole clip range
        assert layer.weight.grad.abs().sum() > 0, p


# -- selection, costs and helpers ------------------------------------------------------------------------
def test_alpha_init_probs_temperature_and_expected_cost():
    layer = MixedPrecisionConv2d(3, 4, 1, alpha_init="int8_biased", name="probe")
    assert layer.alpha.tolist() == pytest.approx([SEED_ALPHA_BIAS[p] for p in PRECISION_ORDER])
    assert layer.derive() == "int8"
    uniform = MixedPrecisionConv2d(3, 4, 1, name="probe")
    assert torch.allclose(uniform.probs(), torch.full((5,), 0.2))

    layer.temperature = 0.01  # a low temperature sharpens π towards the argmax
    assert layer.probs()[PRECISION_ORDER.index("int8")] > 0.99
    layer.temperature = 1.0
    costs = torch.tensor([32.0, 16, 8, 4, 2])
    cost = layer.expected_cost(costs)
    assert cost.item() == pytest.approx(float((layer.probs() * costs).sum().detach()))
    cost.backward()
    assert (layer.alpha.grad != 0).all()
    with pytest.raises(ValueError, match="layer probe: cost vector has 3 entries, expected 5"):
        layer.expected_cost([1.0, 2.0, 3.0])

    layer.gumbel = True
    layer.train()
    sample = layer.probs()
    assert sample.sum().item() == pytest.approx(1.0) and not torch.allclose(sample, layer.probs(sample=False))


def test_mapping_helpers_and_restrict_precisions():
    model = tiny_model()
    names = [n for n, _ in mixed_layers(model)]
    set_temperature(model, 0.5)
    assert all(layer.temperature == 0.5 for _, layer in mixed_layers(model))
    assert len(arch_parameters(model)) == len(names)
    assert not {id(p) for p in arch_parameters(model)} & {id(p) for p in weight_parameters(model)}

    mapping = {n: PRECISION_ORDER[i % 5] for i, n in enumerate(names)}
    apply_mapping(model, mapping)
    assert current_mapping(model) == mapping

    allowed = {n: (["int8", "int4"] if i % 2 else ["int4"]) for i, n in enumerate(names)}
    before = {n: float(l.clip_for("int4").detach()) for n, l in mixed_layers(model)}
    restrict_precisions(model, allowed)
    assert allowed_precisions(model) == allowed
    for i, (n, layer) in enumerate(mixed_layers(model)):
        assert layer.alpha.numel() == len(allowed[n]) and layer.act_clip.numel() == len(allowed[n])
        assert float(layer.clip_for("int4").detach()) == before[n]  # kept clips stay
        if len(allowed[n]) == 1:
            assert layer.mode == "fixed" and layer.fixed_precision == "int4"
    assert set(derive_mapping(model).values()) <= {"int8", "int4"}
    model(images())  # still runs


def test_mapping_name_errors_list_missing_and_unknown_layers():
    model = tiny_model()
    names = [n for n, _ in mixed_layers(model)]
    mapping = {n: "int8" for n in names[1:]}
    mapping["features.99.conv"] = "int8"
    with pytest.raises(ValueError) as err:
        apply_mapping(model, mapping, where="mapping.json")
    msg = str(err.value)
    assert msg.startswith("mapping.json") and f"missing layers: {names[0]}" in msg
    assert "unknown layers: features.99.conv" in msg

    allowed = {n: ["int8"] for n in names[1:]}
    allowed["nope"] = ["int8"]
    with pytest.raises(ValueError, match=rf"missing layers: {re.escape(names[0])}; unknown layers: nope$"):
        restrict_precisions(model, allowed)


# -- bad input --------------------------------------------------------------------------------------
ALLOWED_LIST = "fp32, fp16, int8, int4, int2"


def test_bad_precisions_name_the_layer_and_the_allowed_values():
    with pytest.raises(ValueError, match=rf"layer stem: unknown precision 'int3'; expected one of {ALLOWED_LIST}"):
        MixedPrecisionConv2d(3, 8, 3, precisions=["int8", "int3"], name="stem")
    with pytest.raises(ValueError, match=rf"layer head: the allowed precision list is empty; .*{ALLOWED_LIST}"):
        MixedPrecisionLinear(8, 2, precisions=[], name="head")
    with pytest.raises(ValueError, match="alpha_init"):
        MixedPrecisionLinear(8, 2, alpha_init="random", name="head")

    layer = MixedPrecisionConv2d(3, 8, 1, precisions=["int8", "int4"], name="features.0.0")
    with pytest.raises(ValueError, match="layer features.0.0: precision 'fp16' is not allowed here; allowed: int8, int4"):
        layer.set_precision("fp16")
    with pytest.raises(ValueError, match="layer features.0.0: unknown mode 'fast'; expected one of composite"):
        layer.set_mode("fast")

    model = tiny_model()
    first = next(iter(dict(mixed_layers(model))))
    restrict_precisions(model, {n: ["int8", "int4"] for n, _ in mixed_layers(model)})
    with pytest.raises(ValueError, match=rf"layer {first}: precision 'fp32' is not allowed here; allowed: int8, int4"):
        apply_mapping(model, {n: "fp32" for n, _ in mixed_layers(model)})
    with pytest.raises(ValueError, match=rf"layer {first}: unknown precision 'int16'; expected one of {ALLOWED_LIST}"):
        restrict_precisions(model, {n: ["int16"] for n, _ in mixed_layers(model)})
    with pytest.raises(ValueError, match=rf"layer {first}: the allowed precision list is empty"):
        build_model("mobilenetv2", precisions={n: [] for n, _ in mixed_layers(model)}, **TINY)
    with pytest.raises(ValueError, match=rf"model mobilenetv2: precisions: unknown precision 'int3'; expected one of {ALLOWED_LIST}"):
        build_model("mobilenetv2", precisions=["int8", "int3"], **TINY)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        set_temperature(model, 0.0)


# -- state_dict round trip ---------------------------------------------------------------------------------
def test_state_dict_round_trip_through_a_file(tmp_path):
    names = [n for n, _ in mixed_layers(tiny_model())]
    allowed = {n: (["fp16", "int8", "int4", "int2"] if i % 3 else ["int8", "int2"]) for i, n in enumerate(names)}
    torch.manual_seed(0)
    model = build_model("mobilenetv2", precisions=allowed, **TINY)
    x = images()
    calibrate_activation_clips(model, x)
    with torch.no_grad():  # search state a fresh model does not have
        for _, layer in mixed_layers(model):
            layer.alpha.normal_()
            layer.act_clip.mul_(torch.rand_like(layer.act_clip) + 0.5)
    model.train()
    model(x)  # moves BN running statistics
    model.eval()
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)

    torch.manual_seed(1)
    fresh = build_model("mobilenetv2", precisions=allowed, **TINY)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
    for (n, a), (_, b) in zip(mixed_layers(model), mixed_layers(fresh)):
        assert torch.equal(a.alpha, b.alpha) and torch.equal(a.act_clip, b.act_clip), n
    assert derive_mapping(fresh) == derive_mapping(model)
