"""Model registry (timm style): ``build_model(name, **kwargs)``, ``list_models()``, and the model spec.

Every built model carries ``model.spec``, a JSON-serialisable dict from which ``build_from_spec``
rebuilds the same network; checkpoints and analysis files record it, and ``spec_differences`` is the
one comparison of two specs.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch.nn as nn

from .network import name_layers, restrict_precisions, set_weight_grid
from .precisions import PRECISION_ORDER, canonical_precisions
from .quantizers import DEFAULT_WEIGHT_GRID, check_weight_grid

# The spec key of the integer weight grid (models.quantizers.WEIGHT_GRIDS). A quantizer setting, not a
# builder argument: written only when it is not the default, so every file written before the option
# existed reads as what it is (DoReFa), and the FP32 pretraining checkpoint a search starts from has none.
WEIGHT_GRID = "weight_grid"

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}
_TORCHVISION_NAMES: Dict[str, str] = {}


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
                weight_grid: str = DEFAULT_WEIGHT_GRID, **kwargs) -> nn.Module:
    """Build a registered model.

    ``precisions`` is either one list for every layer or a dict layer name → allowed list (as in an
    analysis.json); with a dict, names must match the model exactly. ``weight_grid``: the grid every
    layer rounds its integer weights to (recorded in the spec when not the default).
    """
    _check_name(name)
    check_weight_grid(weight_grid, f"model {name}: weight_grid")
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
    set_weight_grid(model, weight_grid)
    spec = {"type": name}
    for k, p in accepted.items():
        if k in ("precisions", "alpha_init"):
            continue
        v = kwargs.get(k, p.default)
        if k == "strides" and hasattr(model, "strides"):
            v = list(model.strides)
        spec[k] = list(v) if isinstance(v, tuple) else v
    if weight_grid != DEFAULT_WEIGHT_GRID:
        spec[WEIGHT_GRID] = weight_grid
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



# What decides a network's layers and shapes: two files whose specs differ here describe different networks.
SPEC_KEYS_COMPARED = ("type", "width_mult", "input_size", "strides", "num_classes")


def spec_differences(expected: Mapping[str, Any], found: Mapping[str, Any],
                     keys: Optional[Sequence[str]] = SPEC_KEYS_COMPARED) -> List[str]:
    """'key X there, Y here' for every compared key where two model specs differ (``keys`` None: every
    key of either). A key one spec lacks is not compared, so older files without ``strides`` still
    match."""
    compared = sorted(set(expected) | set(found)) if keys is None else [
        k for k in keys if k in expected and k in found]
    return [f"{k} {found.get(k)!r} there, {expected.get(k)!r} here" for k in compared
            if expected.get(k) != found.get(k)]


def check_same_model(expected: Mapping[str, Any], found: Mapping[str, Any], what: str,
                     keys: Optional[Sequence[str]] = SPEC_KEYS_COMPARED, error=ValueError) -> None:
    """Raise ``error`` naming ``what`` when ``found`` (a file's spec) describes another network."""
    diffs = spec_differences(expected, found, keys)
    if diffs:
        raise error(f"{what} was made for another model ({'; '.join(diffs)})")


def spec_weight_grid(spec: Mapping[str, Any]) -> str:
    """The weight grid a spec records (absent: the default, DoReFa)."""
    return str(spec.get(WEIGHT_GRID, DEFAULT_WEIGHT_GRID))


def architecture_spec(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """The spec without its quantizer settings: what an FP32 network (a pretraining checkpoint) records."""
    return {k: v for k, v in spec.items() if k != WEIGHT_GRID}


def check_same_grid(expected: Mapping[str, Any], found: Mapping[str, Any], what: str, error=ValueError) -> None:
    """Raise ``error`` naming ``what`` when ``found`` (a file's spec) rounds weights to another grid than
    ``expected``: the integer codes of one grid are not those of the other, so the files do not belong
    together. Compared with the default filled in, unlike ``check_same_model``'s absent keys."""
    a, b = spec_weight_grid(expected), spec_weight_grid(found)
    if a != b:
        raise error(f"{what} was made with weight grid {b!r}, this network uses {a!r} (--weight_grid)")
