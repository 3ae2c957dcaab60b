"""torchvision's ImageNet weights for the registered models whose module tree is torchvision's."""
from __future__ import annotations

import os
import socket
from typing import List, Mapping
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torchvision

from .network import mixed_layers
from .registry import list_models, torchvision_name


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
    tv_name = torchvision_name(spec["type"]) if spec.get("type") in list_models() else None
    if tv_name is None:
        raise PretrainedUnavailable(f"no ImageNet weights are known for model {spec.get('type')!r}")
    if spec.get("width_mult", 1.0) != 1.0:
        raise PretrainedUnavailable(f"torchvision publishes ImageNet weights for width 1.0 only, "
                                    f"not width_mult={spec.get('width_mult')}")
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


