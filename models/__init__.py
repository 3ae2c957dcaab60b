"""Model registry (timm style): ``build_model(name, **kwargs)``, ``list_models()``.

Every built model carries ``model.spec``, a JSON-serialisable dict from which ``build_from_spec``
rebuilds the same network; checkpoints and analysis files record it.
"""
from __future__ import annotations

import inspect
import os
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch.nn as nn

from .base import (PRECISION_ORDER, allowed_precisions, canonical_precisions, mixed_layers, name_layers,
                   restrict_precisions)

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}
_TORCHVISION_NAMES: Dict[str, str] = {}
# spec keys every model accepts; the rest of a builder's signature is model-specific
SPEC_KEYS = ("num_classes", "width_mult", "input_size", "strides")


def register_model(name: str, torchvision_name: Optional[str] = None):
    """Register a builder. ``torchvision_name`` names the torchvision constructor with the same module
    tree, used for ImageNet weights and equivalence tests."""
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        if torchvision_name:
            _TORCHVISION_NAMES[name] = torchvision_name
        return fn
    return deco


def list_models() -> List[str]:
    return sorted(_REGISTRY)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")


def build_model(name: str, precisions: Union[Sequence[str], Mapping[str, Sequence[str]]] = PRECISION_ORDER,
                **kwargs) -> nn.Module:
    """Build a registered model.

    ``precisions`` is either one list for every layer or a dict layer name → allowed list (as in an
    analysis.json); with a dict, names must match the model exactly.
    """
    _check_name(name)
    builder = _REGISTRY[name]
    accepted = inspect.signature(builder).parameters
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ValueError(f"model {name!r} does not take {', '.join(unknown)}; "
                         f"it takes {', '.join(k for k in accepted if k != 'precisions')}")
    per_layer = isinstance(precisions, Mapping)
    if not per_layer:  # one clear error here rather than one from the first layer built
        precisions = canonical_precisions(precisions, f"model {name}: precisions")
    model = builder(precisions=PRECISION_ORDER if per_layer else tuple(precisions), **kwargs)
    if per_layer:
        restrict_precisions(model, precisions, where=f"precisions for {name}")
    name_layers(model)
    spec = {"type": name}
    for k, p in accepted.items():
        if k in ("precisions", "alpha_init"):
            continue
        v = kwargs.get(k, p.default)
        if k == "strides" and hasattr(model, "strides"):
            v = list(model.strides)
        spec[k] = list(v) if isinstance(v, tuple) else v
    model.spec = spec
    return model


def build_from_spec(spec: Mapping, precisions=PRECISION_ORDER, **overrides) -> nn.Module:
    """Rebuild a model from ``model.spec`` (as stored in checkpoints and JSON files)."""
    spec = dict(spec)
    name = spec.pop("type", None)
    if name is None:
        raise ValueError("model spec has no 'type'")
    spec.update(overrides)
    return build_model(name, precisions=precisions, **spec)


def torchvision_name(name: str) -> Optional[str]:
    _check_name(name)
    return _TORCHVISION_NAMES.get(name)


def load_torchvision_state_dict(model: nn.Module, state_dict: Mapping, strict_shapes: bool = False) -> List[str]:
    """Copy a torchvision state_dict into our model. The module trees are the same, so the key mapping
    is the identity; the search-only tensors (α, PACT clips) keep their values. Tensors whose shape
    differs (a classifier for another number of classes) are skipped and returned, unless
    ``strict_shapes``."""
    own = model.state_dict()
    search_only = {f"{n}.{s}" for n, _ in mixed_layers(model) for s in ("alpha", "act_clip")}
    missing = [k for k in own if k not in state_dict and k not in search_only]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise ValueError(f"torchvision state_dict does not match the model: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    skipped = []
    to_load = {}
    for k, v in state_dict.items():
        if own[k].shape != v.shape:
            if strict_shapes:
                raise ValueError(f"shape mismatch for {k}: model {tuple(own[k].shape)}, given {tuple(v.shape)}")
            skipped.append(k)
            continue
        to_load[k] = v
    model.load_state_dict(to_load, strict=False)
    return skipped


class PretrainedUnavailable(RuntimeError):
    """ImageNet weights could not be obtained (offline machine, unsupported width)."""


def load_imagenet_pretrained(model: nn.Module, timeout_s: float = 20.0) -> List[str]:
    """Initialise from torchvision's ImageNet weights: from the torch hub cache when they are there,
    else downloaded into it (needs the internet). Network waits are bounded by ``timeout_s`` per
    socket operation, so an offline machine fails in seconds instead of hanging on a dropped
    connection. Raises PretrainedUnavailable with what to do instead."""
    spec = getattr(model, "spec", {})
    tv_name = _TORCHVISION_NAMES.get(spec.get("type"))
    if tv_name is None:
        raise PretrainedUnavailable(f"no ImageNet weights are known for model {spec.get('type')!r}")
    if spec.get("width_mult", 1.0) != 1.0:
        raise PretrainedUnavailable(f"torchvision publishes ImageNet weights for width 1.0 only, "
                                    f"not width_mult={spec.get('width_mult')}")
    import socket
    from urllib.parse import urlparse

    import torch
    import torchvision
    try:
        weights = torchvision.models.get_model_weights(tv_name).DEFAULT
    except (ValueError, AttributeError) as exc:
        raise PretrainedUnavailable(f"torchvision has no ImageNet weights for {tv_name}: {exc}") from None
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # urllib (used by torch.hub) has no timeout of its own
    try:
        state = weights.get_state_dict(progress=False)  # reads `cached` when present
    except Exception as exc:
        raise PretrainedUnavailable(
            f"could not get torchvision's ImageNet weights for {tv_name} "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"this needs the internet, or the file {weights.url} saved as {cached}") from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return load_torchvision_state_dict(model, state)


# -- registered models ----------------------------------------------------------------------------
from .mobilenetv2 import MobileNetV2  # noqa: E402


@register_model("mobilenetv2", torchvision_name="mobilenet_v2")
def mobilenetv2(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32,
                strides="auto", dropout: float = 0.2, precisions=PRECISION_ORDER,
                alpha_init: str = "uniform") -> nn.Module:
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, input_size=input_size,
                       strides=strides, dropout=dropout, precisions=precisions, alpha_init=alpha_init)


__all__ = ["build_model", "build_from_spec", "list_models", "register_model", "torchvision_name",
           "load_torchvision_state_dict", "load_imagenet_pretrained", "PretrainedUnavailable",
           "allowed_precisions"]


# -- MobileNetV3 and EfficientNet (issue 8) ---------------------------------------------------------
from .efficientnet import EfficientNet  # noqa: E402
from .mobilenetv3 import MobileNetV3  # noqa: E402


@register_model("mobilenetv3_small", torchvision_name="mobilenet_v3_small")
def mobilenetv3_small(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32,
                      strides="auto", dropout: float = 0.2, precisions=PRECISION_ORDER,
                      alpha_init: str = "uniform") -> nn.Module:
    return MobileNetV3("small", num_classes=num_classes, width_mult=width_mult, input_size=input_size,
                       strides=strides, dropout=dropout, precisions=precisions, alpha_init=alpha_init)


@register_model("mobilenetv3_large", torchvision_name="mobilenet_v3_large")
def mobilenetv3_large(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32,
                      strides="auto", dropout: float = 0.2, precisions=PRECISION_ORDER,
                      alpha_init: str = "uniform") -> nn.Module:
    return MobileNetV3("large", num_classes=num_classes, width_mult=width_mult, input_size=input_size,
                       strides=strides, dropout=dropout, precisions=precisions, alpha_init=alpha_init)


@register_model("efficientnet_b0", torchvision_name="efficientnet_b0")
def efficientnet_b0(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32,
                    strides="auto", dropout: float = 0.2, stochastic_depth_prob: float = 0.2,
                    precisions=PRECISION_ORDER, alpha_init: str = "uniform") -> nn.Module:
    return EfficientNet("b0", num_classes=num_classes, width_mult=width_mult, input_size=input_size,
                        strides=strides, dropout=dropout, stochastic_depth_prob=stochastic_depth_prob,
                        precisions=precisions, alpha_init=alpha_init)


@register_model("efficientnet_lite0")
def efficientnet_lite0(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32,
                       strides="auto", dropout: float = 0.2, stochastic_depth_prob: float = 0.2,
                       precisions=PRECISION_ORDER, alpha_init: str = "uniform") -> nn.Module:
    return EfficientNet("lite0", num_classes=num_classes, width_mult=width_mult, input_size=input_size,
                        strides=strides, dropout=dropout, stochastic_depth_prob=stochastic_depth_prob,
                        precisions=precisions, alpha_init=alpha_init)


# -- MobileNetV1 (issue 4) ---------------------------------------------------------------------------
from .mobilenetv1 import MobileNetV1  # noqa: E402


@register_model("mobilenetv1")
def mobilenetv1(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32,
                strides="auto", dropout: float = 0.2, precisions=PRECISION_ORDER,
                alpha_init: str = "uniform") -> nn.Module:
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult, input_size=input_size,
                       strides=strides, dropout=dropout, precisions=precisions, alpha_init=alpha_init)
