"""MobileNetV3-Small/-Large, EfficientNet-B0 and EfficientNet-Lite0 (issue 8): torchvision equivalence
at fp32, the PACT sign of every layer, search-mode gradients and small-input strides."""
import pytest
import torch
import torch.nn as nn
import torchvision

from models import build_from_spec, build_model, load_torchvision_state_dict, torchvision_name
from models.blocks import stride_presets
from models.mobilenetv2 import STRIDE_PRESETS
from models.network import apply_mapping, mixed_layers, set_mode

TORCHVISION_BACKED = ["mobilenetv3_small", "mobilenetv3_large", "efficientnet_b0"]
ALL_MODELS = TORCHVISION_BACKED + ["efficientnet_lite0"]
SEARCH_ONLY = (".alpha", ".act_clip")


def own_parameter_count(model):
    return sum(p.numel() for k, p in model.named_parameters() if not k.endswith(SEARCH_ONLY))


@torch.no_grad()
def make_batchnorm_nontrivial(model, x):
    """Random BN affine terms and conv/Linear biases, and BN statistics from a real batch, so that
    eval-mode outputs are not vanishingly small and activations cross zero (a freshly built network's
    outputs are ~1e-10, every bias is zero and every BN is the identity)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.normal_(0.0, 0.5)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0.0, 1.0)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch sets the statistics
    model.eval()
    for bn in bns:  # only BN in training mode: dropout and stochastic depth would skew the statistics
        bn.train()
    model(x)
    model.eval()


def varied_images(n, size):
    """Noise with a per-image, per-channel offset and scale, so pooled features differ between images."""
    return torch.randn(n, 3, size, size) * torch.rand(n, 3, 1, 1).add(0.5) + torch.randn(n, 3, 1, 1)


@pytest.mark.parametrize("name", TORCHVISION_BACKED)
def test_fp32_model_is_torchvisions_network(name):
    torch.manual_seed(0)
    ours = build_model(name, num_classes=1000, input_size=224)  # ImageNet strides
    assert ours.strides == build_model(name, num_classes=1000, strides="imagenet").strides
    theirs = getattr(torchvision.models, torchvision_name(name))(num_classes=1000)
    assert own_parameter_count(ours) == sum(p.numel() for p in theirs.parameters())

    x = varied_images(2, 64)
    make_batchnorm_nontrivial(theirs, x)
    assert load_torchvision_state_dict(ours, theirs.state_dict(), strict_shapes=True) == []
    apply_mapping(ours, {layer: "fp32" for layer, _ in mixed_layers(ours)})
    ours.eval()
    with torch.no_grad():
        expected = theirs(x)
        got = ours(x)
    assert expected.std() > 1e-2, "the comparison would be vacuous"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_torchvision_names_are_registered():
    assert torchvision_name("mobilenetv3_small") == "mobilenet_v3_small"
    assert torchvision_name("mobilenetv3_large") == "mobilenet_v3_large"
    assert torchvision_name("efficientnet_b0") == "efficientnet_b0"
    assert torchvision_name("efficientnet_lite0") is None


@pytest.mark.parametrize("name", ALL_MODELS)
def test_signed_input_matches_what_each_layer_sees(name):
    """Unsigned PACT would clamp negatives away: a layer marked unsigned must never see one, and a layer
    marked signed should (else it wastes a bit)."""
    torch.manual_seed(1)
    model = build_model(name, num_classes=10, width_mult=0.35, input_size=32)
    x = varied_images(16, 32)
    apply_mapping(model, {layer: "fp32" for layer, _ in mixed_layers(model)})
    make_batchnorm_nontrivial(model, x)
    input_min = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: input_min.__setitem__(n, float(inp[0].min())))
             for n, m in mixed_layers(model)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    layers = dict(mixed_layers(model))
    assert input_min.keys() == layers.keys()
    wrong_unsigned = [n for n, m in layers.items() if not m.signed_input and input_min[n] < 0]
    wasted_sign = [n for n, m in layers.items() if m.signed_input and input_min[n] >= 0]
    assert not wrong_unsigned, f"negative inputs clamped by unsigned PACT: {wrong_unsigned}"
    assert not wasted_sign, f"signed PACT on inputs that are never negative: {wasted_sign}"


def test_efficientnet_lite0_is_b0_without_se_with_relu6_and_fixed_stem_head():
    lite = build_model("efficientnet_lite0", num_classes=10, width_mult=0.5, input_size=32)
    b0 = build_model("efficientnet_b0", num_classes=10, width_mult=0.5, input_size=32)
    assert not any(n.endswith((".fc1", ".fc2")) for n, _ in mixed_layers(lite))
    assert any(n.endswith((".fc1", ".fc2")) for n, _ in mixed_layers(b0))
    assert not any(isinstance(m, (nn.SiLU, nn.Sigmoid)) for m in lite.modules())
    assert any(isinstance(m, nn.ReLU6) for m in lite.modules())
    assert lite.features[0][0].out_channels == 32 and lite.classifier[1].in_features == 1280
    assert b0.features[0][0].out_channels == 16 and b0.classifier[1].in_features == 640
    # same block structure otherwise
    assert [type(m) for m in lite.features] == [type(m) for m in b0.features]
    assert lite.features[3][0].block[-1][0].out_channels == b0.features[3][0].block[-1][0].out_channels


@pytest.mark.parametrize("name", ALL_MODELS)
def test_composite_search_step_reaches_every_alpha(name):
    torch.manual_seed(2)
    # stochastic depth can drop a whole branch for a batch of two, and its layers then get no gradient
    extra = {"stochastic_depth_prob": 0.0} if name.startswith("efficientnet") else {}
    model = build_model(name, num_classes=10, width_mult=0.35, input_size=32, **extra)
    set_mode(model, "composite")
    model.train()
    loss = nn.functional.cross_entropy(model(varied_images(2, 32)), torch.tensor([3, 7]))
    loss.backward()
    no_grad = [n for n, m in mixed_layers(model) if m.alpha.grad is None or not m.alpha.grad.abs().sum() > 0]
    assert not no_grad, f"layers whose α got no gradient: {no_grad}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name,final_px", [("mobilenetv3_small", 4), ("mobilenetv3_large", 4),
                                           ("efficientnet_b0", 4), ("efficientnet_lite0", 4)])
def test_small_inputs_downsample_8x_and_imagenet_inputs_32x(name, final_px):
    small = build_model(name, precisions=["fp32"], num_classes=7, width_mult=0.35, input_size=32).eval()
    assert small.strides[0] == 1 and small.strides.count(2) == 3
    with torch.no_grad():
        assert small.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (final_px, final_px)
        assert small(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    large = build_model(name, precisions=["fp32"], num_classes=7, width_mult=0.35, input_size=224)
    assert large.strides[0] == 2 and large.strides.count(2) == 5
    # the spec records the resolved strides and rebuilds the same network
    rebuilt = build_from_spec(small.spec, precisions=["fp32"])
    assert rebuilt.strides == small.strides
    assert [n for n, _ in mixed_layers(rebuilt)] == [n for n, _ in mixed_layers(small)]


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_lite0"])
def test_stochastic_depth_drops_branches_in_training_only(name):
    torch.manual_seed(3)
    kw = dict(precisions=["fp32"], num_classes=10, width_mult=0.35, input_size=32)
    dropping = build_model(name, stochastic_depth_prob=0.9, **kw)
    plain = build_model(name, stochastic_depth_prob=0.0, **kw)
    x = varied_images(4, 32)
    make_batchnorm_nontrivial(plain, x)
    dropping.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(dropping.eval()(x), plain.eval()(x), rtol=0, atol=0)
        dropping.train(), plain.train()
        for m in (dropping, plain):  # keep BN and dropout identical, so only stochastic depth differs
            for mod in m.modules():
                if isinstance(mod, (nn.BatchNorm2d, nn.Dropout)):
                    mod.eval()
        expected = plain(x)
        assert (dropping(x) - expected).abs().max() > 1e-2 * expected.abs().max()


def test_stride_presets_follow_mobilenetv2s_rule():
    assert stride_presets(STRIDE_PRESETS["imagenet"]) == STRIDE_PRESETS


@pytest.mark.parametrize("name", ALL_MODELS)
def test_bad_strides_and_sizes_are_rejected_clearly(name):
    with pytest.raises(ValueError, match="strides"):
        build_model(name, strides=[1, 2])
    with pytest.raises(ValueError, match="strides: unknown preset"):
        build_model(name, strides="tiny")
    with pytest.raises(ValueError, match="width_mult"):
        build_model(name, width_mult=0)
