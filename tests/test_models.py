"""The registered networks (models/): each one, parametrised over the registry, builds from its spec,
is torchvision's network at fp32 where torchvision has it, gives every layer the PACT sign of the values
it sees, reaches every α in a composite search step and follows the small-input stride rule; plus what is
specific to one family (MobileNetV2's names and presets, MobileNetV1's layout, EfficientNet's stochastic
depth and Lite variant)."""
import pytest
import torch
import torch.nn as nn
import torchvision

from models import build_from_spec, build_model, list_models, load_torchvision_state_dict, torchvision_name
from models.blocks import stride_presets
from models.mobilenetv2 import STRIDE_PRESETS
from models.network import apply_mapping, mixed_layers, set_mode

ALL_MODELS = list_models()
TORCHVISION_BACKED = [name for name in ALL_MODELS if torchvision_name(name)]
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


@torch.no_grad()
def randomise_batchnorm(model, seed=0):
    """Non-trivial BN affine terms and running statistics, so that loading them is tested too."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


# ----------------------------------------------------------------------------------------------------
# Every registered network
# ----------------------------------------------------------------------------------------------------
def test_the_registry_holds_the_documented_networks():
    assert set(ALL_MODELS) == {"mobilenetv1", "mobilenetv2", "mobilenetv3_small", "mobilenetv3_large",
                               "efficientnet_b0", "efficientnet_lite0"}


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


@pytest.mark.parametrize("name", ALL_MODELS)
def test_small_inputs_downsample_8x_and_imagenet_inputs_32x(name):
    final_px = 4
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


@pytest.mark.parametrize("name", ALL_MODELS)
def test_bad_strides_and_sizes_are_rejected_clearly(name):
    with pytest.raises(ValueError, match="strides"):
        build_model(name, strides=[1, 2])
    with pytest.raises(ValueError, match="strides: unknown preset"):
        build_model(name, strides="tiny")
    with pytest.raises(ValueError, match="width_mult"):
        build_model(name, width_mult=0)


# ----------------------------------------------------------------------------------------------------
# MobileNetV2
# ----------------------------------------------------------------------------------------------------
def test_parameter_count_is_torchvisions():
    ours = build_model("mobilenetv2", width_mult=1.0, num_classes=1000, input_size=224)
    assert ours.strides == STRIDE_PRESETS["imagenet"]
    assert own_parameter_count(ours) == 3_504_872
    theirs = torchvision.models.mobilenet_v2(weights=None)
    assert sum(p.numel() for p in theirs.parameters()) == 3_504_872


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_fp32_outputs_equal_torchvisions_after_loading_its_state_dict(width):
    torch.manual_seed(0)
    theirs = torchvision.models.mobilenet_v2(weights=None, width_mult=width)
    randomise_batchnorm(theirs)
    ours = build_model("mobilenetv2", width_mult=width, num_classes=1000, strides="imagenet", input_size=64)
    assert load_torchvision_state_dict(ours, theirs.state_dict(), strict_shapes=True) == []
    apply_mapping(ours, {name: "fp32" for name, _ in mixed_layers(ours)})
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max() > 1e-2  # a real signal, not two vanishing outputs
    assert (got - expected).abs().max() < 1e-4


def test_loading_skips_a_classifier_of_another_size_and_rejects_other_networks():
    theirs = torchvision.models.mobilenet_v2(weights=None, width_mult=0.5)
    ours = build_model("mobilenetv2", width_mult=0.5, num_classes=10)
    assert load_torchvision_state_dict(ours, theirs.state_dict()) == ["classifier.1.weight", "classifier.1.bias"]
    assert torch.equal(ours.features[3].conv[1][0].weight, theirs.features[3].conv[1][0].weight)
    with pytest.raises(ValueError, match=r"shape mismatch for classifier.1.weight: model \(10, 1280\)"):
        load_torchvision_state_dict(ours, theirs.state_dict(), strict_shapes=True)
    with pytest.raises(ValueError, match="does not match the model: missing"):
        load_torchvision_state_dict(ours, torchvision.models.resnet18(weights=None).state_dict())


def test_strides_follow_the_input_size_and_presets():
    for size, preset in ((32, "cifar"), (64, "cifar"), (112, "imagenet")):
        assert build_model("mobilenetv2", width_mult=0.1, input_size=size).strides == STRIDE_PRESETS[preset]
    seed = build_model("mobilenetv2", width_mult=0.1, input_size=32, strides="seed")
    assert seed.strides == (1, 1, 2, 2, 2, 1, 2, 1)
    with torch.no_grad():  # total downsampling: 8 for cifar, 16 for seed, 32 for imagenet
        x = torch.randn(1, 3, 32, 32)
        assert build_model("mobilenetv2", width_mult=0.1).eval().features(x).shape[-1] == 4
        assert seed.eval().features(x).shape[-1] == 2
        assert build_model("mobilenetv2", width_mult=0.1, strides="imagenet").eval().features(x).shape[-1] == 1
    with pytest.raises(ValueError, match="strides: unknown preset 'tiny'"):
        build_model("mobilenetv2", strides="tiny")
    with pytest.raises(ValueError, match="strides: expected 8 values of 1 or 2"):
        build_model("mobilenetv2", strides=[1, 2, 2])
    with pytest.raises(ValueError, match="width_mult must be > 0"):
        build_model("mobilenetv2", width_mult=0)


def test_layer_names_kinds_and_pact_signs():
    model = build_model("mobilenetv2", width_mult=0.35)
    layers = dict(mixed_layers(model))
    assert len(layers) == 53  # 52 convs + the classifier
    assert all(layer.layer_name == name for name, layer in layers.items())
    assert layers["features.3.conv.1.0"].op_kind == "dwconv"
    assert layers["features.3.conv.0.0"].op_kind == "pwconv"
    assert layers["features.0.0"].op_kind == "conv" and layers["classifier.1"].op_kind == "linear"
    signed = {name for name, layer in layers.items() if layer.signed_input}
    # the normalised image, and every block input that is a linear bottleneck or a residual sum
    assert "features.0.0" in signed and "features.2.conv.0.0" in signed and "features.18.0" in signed
    # after ReLU6: the first block's depthwise conv, every depthwise and projection conv, the classifier
    assert "features.1.conv.0.0" not in signed and "classifier.1" not in signed
    assert signed == {"features.0.0", "features.18.0"} | {f"features.{i}.conv.0.0" for i in range(2, 18)}

    rebuilt = build_from_spec(model.spec)
    assert [n for n, _ in mixed_layers(rebuilt)] == list(layers)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_stride_presets_follow_mobilenetv2s_rule():
    assert stride_presets(STRIDE_PRESETS["imagenet"]) == STRIDE_PRESETS


# ----------------------------------------------------------------------------------------------------
# MobileNetV1, EfficientNet
# ----------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------
# MobileNetV1 and the model-name mapping
# ----------------------------------------------------------------------------------------------------
def test_mobilenetv1_layout_signs_and_small_input_strides():
    model = build_model("mobilenetv1", width_mult=0.25, input_size=32, num_classes=10)
    layers = dict(mixed_layers(model))
    assert len(layers) == 28 and list(layers)[:3] == ["features.0.0", "features.1.conv.0.0", "features.1.conv.1.0"]
    assert [n for n, m in layers.items() if m.signed_input] == ["features.0.0"]  # only the image is signed
    assert model.spec["strides"] == [1, 1, 1, 2, 2, 2]
    with torch.device("meta"):
        assert build_model("mobilenetv1", input_size=224).spec["strides"] == [2, 1, 2, 2, 2, 2]
    # shapes only (the quantizers have their own tests): one FP32 forward
    fp32 = build_model("mobilenetv1", width_mult=0.25, input_size=32, num_classes=10, precisions=["fp32"])
    assert fp32(torch.randn(2, 3, 32, 32)).shape == (2, 10)


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
