"""MobileNetV2: with every layer at fp32 it is torchvision's network (parameter count, eval outputs after
loading its state_dict), strides for small inputs, stable layer names, the PACT sign of every layer
input, and ImageNet weights that fail fast and clearly when offline."""
import socket
import time

import pytest
import torch
import torch.nn as nn
import torchvision

from models import (PretrainedUnavailable, build_from_spec, build_model, load_imagenet_pretrained,
                    load_torchvision_state_dict)
from models.mobilenetv2 import STRIDE_PRESETS
from models.network import apply_mapping, mixed_layers

SEARCH_ONLY = (".alpha", ".act_clip")


def own_parameter_count(model):
    return sum(p.numel() for k, p in model.named_parameters() if not k.endswith(SEARCH_ONLY))


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


# -- ImageNet weights -----------------------------------------------------------------------------------
@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, so nothing is found locally."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "hub" / "checkpoints"


def test_pretrained_offline_raises_a_clear_error(empty_hub, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    model = build_model("mobilenetv2", num_classes=10)
    with pytest.raises(PretrainedUnavailable, match=r"needs the internet, or the file https://.*mobilenet_v2-.*\.pth "
                                                    r"saved as .*hub/checkpoints/mobilenet_v2-"):
        load_imagenet_pretrained(model)
    with pytest.raises(PretrainedUnavailable, match="width 1.0 only, not width_mult=0.5"):
        load_imagenet_pretrained(build_model("mobilenetv2", width_mult=0.5))


def test_pretrained_download_cannot_hang_on_a_dropped_connection(empty_hub, monkeypatch):
    """A firewall that drops packets makes connect() wait forever unless a timeout is set."""
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 443))])

    def black_hole(sock, address):
        timeout = sock.gettimeout()
        time.sleep(min(timeout if timeout is not None else 30.0, 30.0))
        raise socket.timeout("timed out")
    monkeypatch.setattr(socket.socket, "connect", black_hole)
    previous = socket.getdefaulttimeout()
    start = time.monotonic()
    with pytest.raises(PretrainedUnavailable, match="timed out"):
        load_imagenet_pretrained(build_model("mobilenetv2", num_classes=10), timeout_s=0.2)
    assert time.monotonic() - start < 10
    assert socket.getdefaulttimeout() == previous


def test_pretrained_weights_come_from_the_hub_cache_without_network(empty_hub, monkeypatch):
    torch.manual_seed(0)
    theirs = torchvision.models.mobilenet_v2(weights=None)
    url = torchvision.models.MobileNet_V2_Weights.DEFAULT.url
    empty_hub.mkdir(parents=True)
    torch.save(theirs.state_dict(), empty_hub / url.rsplit("/", 1)[-1])

    def no_network(*args, **kwargs):
        raise AssertionError("the cached file must be used without touching the network")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    model = build_model("mobilenetv2", num_classes=10)  # CIFAR head: the 1000-class one is skipped
    assert load_imagenet_pretrained(model) == ["classifier.1.weight", "classifier.1.bias"]
    assert torch.equal(model.features[0][0].weight, theirs.features[0][0].weight)
