"""torchvision's ImageNet weights (models/pretrained.py): read from the hub cache without the network,
and an offline or dropped connection fails fast with a line that says what to do."""
import socket
import time

import pytest
import torch
import torchvision

from models import PretrainedUnavailable, build_model, load_imagenet_pretrained


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
