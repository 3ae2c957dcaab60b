"""Derive a fixed-precision network from a searched supernet, and the files that describe it.

The derived network is the supernet's module tree with each layer's α reduced to the one chosen
precision (``restrict_precisions``): the shared weight, BatchNorm and that precision's PACT clip carry
over; nothing of the search remains, so the network runs and fine-tunes like any fixed network.
"""
from __future__ import annotations

import copy
from typing import Dict, Mapping, Sequence

import torch.nn as nn

from models.base import (PRECISION_ORDER, canonical_precisions, check_layer_names_match, mixed_layers,
                         restrict_precisions)

MAPPING_SCHEMA = "adaptqnet/mapping/1"


def derive_fixed_network(supernet: nn.Module, mapping: Mapping[str, str]) -> nn.Module:
    net = copy.deepcopy(supernet)
    restrict_precisions(net, {name: [p] for name, p in mapping.items()}, where="derived mapping")
    net.spec = dict(getattr(supernet, "spec", {}))
    return net


def mapping_document(spec: Mapping, mapping: Mapping[str, object], extra: Mapping = None) -> dict:
    doc = {"schema": MAPPING_SCHEMA, "model": dict(spec), "layers": dict(mapping)}
    if extra:
        doc.update(extra)
    return doc


def check_layer_names(model: nn.Module, names: Sequence[str], path: str) -> None:
    check_layer_names_match([n for n, _ in mixed_layers(model)], names, path)


def parse_mapping_document(doc: object, path: str, model: nn.Module = None) -> Dict[str, object]:
    """Validate a mapping.json document; with ``model``, names must match it exactly (listed)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), dict):
        raise ValueError(f"{path}: not a mapping file (expected an object with a 'layers' object)")
    schema = doc.get("schema", MAPPING_SCHEMA)
    if not str(schema).startswith("adaptqnet/mapping/"):
        raise ValueError(f"{path}: unknown schema {schema!r}; expected {MAPPING_SCHEMA}")
    layers = doc["layers"]
    for name, value in layers.items():
        if isinstance(value, str):
            canonical_precisions([value], f"{path}: layer {name}")
        elif not isinstance(value, dict):
            raise ValueError(f"{path}: layer {name}: expected a precision name or a dual-core object, got {value!r}")
    if model is not None:
        check_layer_names(model, list(layers), path)
    return layers


def precision_histogram(mapping: Mapping[str, str]) -> Dict[str, int]:
    counts = {p: 0 for p in PRECISION_ORDER}
    for p in mapping.values():
        if isinstance(p, str):
            counts[p] += 1
    return {p: c for p, c in counts.items() if c}
