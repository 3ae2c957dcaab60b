"""Whole-network helpers over the mixed-precision layers of a model."""
from __future__ import annotations

import copy
from typing import Dict, Iterator, List, Mapping, Sequence, Tuple

import torch
import torch.nn as nn

from .layers import MIXED_LAYER_TYPES, MixedPrecisionMixin
from .mapping import check_layer_names_match
from .precisions import PRECISIONS, canonical_precisions
from .quantizers import check_weight_grid


def mixed_layers(model: nn.Module) -> Iterator[Tuple[str, MixedPrecisionMixin]]:
    """(module path, layer) for every mixed-precision layer, in registration (= execution) order."""
    for name, m in model.named_modules():
        if isinstance(m, MIXED_LAYER_TYPES):
            yield name, m


def name_layers(model: nn.Module) -> None:
    """Give each mixed layer its module path, so errors and reports name it the way users see it."""
    for name, m in mixed_layers(model):
        m.layer_name = name


def set_weight_grid(model: nn.Module, grid: str) -> None:
    """Round every layer's integer weights to ``grid`` (models.quantizers.WEIGHT_GRIDS)."""
    check_weight_grid(grid)
    for _, m in mixed_layers(model):
        m.weight_grid = grid


def set_temperature(model: nn.Module, temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    for _, m in mixed_layers(model):
        m.temperature = float(temperature)


def set_mode(model: nn.Module, mode: str) -> None:
    for _, m in mixed_layers(model):
        m.set_mode(mode if len(m.precisions) > 1 else "fixed")


def set_gumbel(model: nn.Module, enabled: bool) -> None:
    for _, m in mixed_layers(model):
        m.gumbel = bool(enabled)


def arch_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The logits α of every layer (optimised on the validation split)."""
    return [m.alpha for _, m in mixed_layers(model)]


def weight_parameters(model: nn.Module) -> List[nn.Parameter]:
    """Everything except α: weights, BN, PACT clips (optimised on the train split)."""
    arch = {id(p) for p in arch_parameters(model)}
    return [p for p in model.parameters() if id(p) not in arch]


def derive_mapping(model: nn.Module) -> Dict[str, str]:
    """Argmax precision per layer."""
    return {name: m.derive() for name, m in mixed_layers(model)}


def current_mapping(model: nn.Module) -> Dict[str, str]:
    """The precision each layer runs at now (fixed layers) or would be derived to (searching ones)."""
    return {name: (m.fixed_precision if m.mode == "fixed" else m.derive()) for name, m in mixed_layers(model)}


def apply_mapping(model: nn.Module, mapping: Dict[str, str], where: str = "mapping") -> None:
    """Fix every layer at the precision named in ``mapping``; names must match the model exactly."""
    layers = dict(mixed_layers(model))
    check_layer_names_match(list(layers), mapping, where)
    for name, layer in layers.items():
        layer.set_precision(mapping[name])


def restrict_precisions(model: nn.Module, allowed: Dict[str, Sequence[str]], where: str = "allowed") -> None:
    """Rebuild each layer's α and clips for a new allowed list, keeping the shared weight and the
    clips and logits of precisions that stay. Precisions not allowed then no longer exist."""
    layers = dict(mixed_layers(model))
    check_layer_names_match(list(layers), allowed, where)
    for name, layer in layers.items():
        new = canonical_precisions(allowed[name], f"{where}: layer {name}")
        old_alpha = {p: layer.alpha.data[i] for i, p in enumerate(layer.precisions)}
        old_ints = [p for p in layer.precisions if not PRECISIONS[p].is_float]
        old_clip = {p: layer.act_clip.data[i] for i, p in enumerate(old_ints)}
        default_clip = float(layer.act_clip.data.mean()) if old_ints else 6.0
        dev = layer.alpha.device
        layer.precisions = new
        layer.alpha = nn.Parameter(torch.tensor([float(old_alpha.get(p, 0.0)) for p in new], device=dev))
        new_ints = [p for p in new if not PRECISIONS[p].is_float]
        layer.act_clip = nn.Parameter(torch.tensor([float(old_clip.get(p, default_clip)) for p in new_ints],
                                                   device=dev))
        if len(new) == 1:
            layer.mode, layer.fixed_precision = "fixed", new[0]
        elif layer.mode == "fixed" and layer.fixed_precision not in new:
            layer.mode, layer.fixed_precision = "composite", None


def allowed_precisions(model: nn.Module) -> Dict[str, List[str]]:
    return {name: list(m.precisions) for name, m in mixed_layers(model)}


@torch.no_grad()
def calibrate_activation_clips(model: nn.Module, batch: torch.Tensor, percentile: float = 99.9) -> Dict[str, float]:
    """Set every layer's PACT clips from the inputs it sees on ``batch`` (|x| percentile), so a
    pretrained FP32 network starts its quantized search from sensible ranges instead of a constant."""
    seen: Dict[str, float] = {}
    hooks = []
    for name, m in mixed_layers(model):
        def hook(mod, inputs, _name=name):
            x = inputs[0].detach().abs().flatten().float()
            if x.numel() > 1_000_000:
                x = x[torch.randint(0, x.numel(), (1_000_000,), device=x.device)]
            seen[_name] = float(torch.quantile(x, percentile / 100.0))
        hooks.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for name, m in mixed_layers(model):
        if name in seen and m.act_clip.numel():
            m.act_clip.data.fill_(max(seen[name], 1e-3))
    return seen


def derive_fixed_network(supernet: nn.Module, mapping: Mapping[str, str]) -> nn.Module:
    """A copy of the supernet with each layer's α reduced to its one chosen precision: the shared
    weight, BatchNorm and that precision's PACT clip carry over; nothing of the search remains, so the
    network runs and fine-tunes like any fixed network."""
    net = copy.deepcopy(supernet)
    restrict_precisions(net, {name: [p] for name, p in mapping.items()}, where="derived mapping")
    net.spec = dict(getattr(supernet, "spec", {}))
    return net
