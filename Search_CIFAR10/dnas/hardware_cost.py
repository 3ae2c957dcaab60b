"""The differentiable hardware term of the search loss.

Each searchable layer carries a cost vector aligned with its α (one entry per allowed precision in
stage 1, one per dual-core option in stage 2). Expected costs are Σ π·c, so their gradients reach α.

loss_hw = λ · ( E[latency] / latency_ref            (no latency target), or
                relu(E[latency] − target) / latency_ref (with a target: only the excess costs)
              + relu(E[peak RAM] − budget) / budget )   (with a RAM budget)

latency_ref is the all-INT8 network's latency, so one λ means the same at every input size and on
every profile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from models.network import mixed_layers
from tensor_analysis.memory import ExpectedPeak, mapping_live_bytes

REFERENCE_PRECISION = "int8"


@dataclass
class HardwareCost:
    """Per-layer cost vectors (aligned with each layer's α) plus what the search does not choose."""

    layer_names: List[str]
    option_labels: Dict[str, List[str]]        # what each α entry stands for (precision / dual option)
    latency_ms: Dict[str, torch.Tensor]        # per layer, per α entry
    live_bytes: Dict[str, torch.Tensor]        # per layer, per α entry: bytes alive while it runs
    fixed_ms: float = 0.0                      # residual adds, pooling, ...: not searched
    latency_ref_ms: float = 1.0
    # exact peak RAM of a concrete mapping (tensor_analysis.peak_ram_bytes), which also sees the
    # operators that are not searched and the precision each tensor is stored at
    # live bytes of every operator under a concrete mapping (tensor_analysis' memory model)
    operator_ram_of_mapping: Optional[Callable[[Mapping[str, object]], List[float]]] = None
    expected_peak: Optional[ExpectedPeak] = None

    def attach_memory_model(self, analysis, inplace_depthwise: bool = False) -> "HardwareCost":
        """Use the whole-network memory model (ExpectedPeak, peak_ram_bytes) instead of the
        per-layer live bytes for the RAM term and for the RAM of concrete mappings."""
        self.expected_peak = ExpectedPeak(analysis, self.option_labels, inplace_depthwise)
        self.operator_ram_of_mapping = lambda mapping: [
            float(b) for _, b in mapping_live_bytes(analysis, mapping, inplace_depthwise=inplace_depthwise)]
        return self

    @classmethod
    def from_lut(cls, model: nn.Module, lut: Mapping, analysis_json: Mapping, analysis=None) -> "HardwareCost":
        """Stage 1: α entries are precisions; latency from the LUT, live bytes from analysis.json."""
        layers = list(mixed_layers(model))
        lut_layers = lut.get("layers", {})
        ana_layers = {entry["name"]: entry for entry in analysis_json.get("layers", [])}
        missing = [n for n, _ in layers if n not in lut_layers]
        if missing:
            raise ValueError(f"latency table has no entry for layers: {', '.join(missing[:10])}"
                             + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""))
        key = "live_inplace" if analysis_json.get("memory_model") == "inplace_depthwise" else "live"
        latency, live, labels = {}, {}, {}
        ref = float(lut.get("fixed_ms", 0.0))
        for name, layer in layers:
            row = lut_layers[name]
            per_precision = ana_layers[name]["bytes"]
            missing = [p for p in layer.precisions if p not in row or p not in per_precision]
            if missing:
                raise ValueError(f"layer {name}: no latency or live-bytes entry for {', '.join(missing)} "
                                 f"(latency table has {sorted(row)}, analysis has {sorted(per_precision)})")
            latency[name] = torch.tensor([float(row[p]) for p in layer.precisions])
            live[name] = torch.tensor([float(per_precision[p][key]) for p in layer.precisions])
            labels[name] = list(layer.precisions)
            ref += float(row[REFERENCE_PRECISION]) if REFERENCE_PRECISION in row else float(min(row.values()))
        cost = cls([n for n, _ in layers], labels, latency, live, float(lut.get("fixed_ms", 0.0)), ref)
        if analysis is not None:
            cost.attach_memory_model(analysis, key == "live_inplace")
        return cost

    def to(self, device) -> "HardwareCost":
        self.latency_ms = {k: v.to(device) for k, v in self.latency_ms.items()}
        self.live_bytes = {k: v.to(device) for k, v in self.live_bytes.items()}
        if self.expected_peak is not None:
            self.expected_peak.to(device)
        return self

    # -- expectations under π (differentiable) ---------------------------------------------------
    def _layers(self, model):
        layers = dict(mixed_layers(model))
        return [(n, layers[n]) for n in self.layer_names]

    def expected_latency_ms(self, model: nn.Module) -> torch.Tensor:
        total = None
        for name, layer in self._layers(model):
            term = layer.expected_cost(self.latency_ms[name])
            total = term if total is None else total + term
        return total + self.fixed_ms

    def expected_peak_ram_bytes(self, model: nn.Module) -> torch.Tensor:
        """Expected peak RAM: the whole-network model when attached, else the max over layers of
        their expected live bytes. Either way the gradient goes to the layers at the peak, whose
        precision must drop for the network to fit."""
        if self.expected_peak is not None:
            return self.expected_peak({name: layer.probs(sample=False) for name, layer in self._layers(model)})
        per_layer = torch.stack([layer.expected_cost(self.live_bytes[name]) for name, layer in self._layers(model)])
        return per_layer.max()

    # -- a concrete choice (argmax / derived mapping) --------------------------------------------
    def _pick(self, table: Dict[str, torch.Tensor], choice: Mapping[str, str]) -> List[float]:
        out = []
        for name in self.layer_names:
            labels = self.option_labels[name]
            if choice[name] not in labels:
                raise ValueError(f"layer {name}: {choice[name]!r} is not one of its options {labels}")
            out.append(float(table[name][labels.index(choice[name])]))
        return out

    def mapping_latency_ms(self, choice: Mapping[str, str]) -> float:
        return self.fixed_ms + sum(self._pick(self.latency_ms, choice))

    def mapping_operator_ram(self, choice: Mapping[str, object]) -> List[float]:
        if self.operator_ram_of_mapping is not None:
            return self.operator_ram_of_mapping(choice)
        return self._pick(self.live_bytes, choice)

    def mapping_peak_ram_bytes(self, choice: Mapping[str, object]) -> float:
        return max(self.mapping_operator_ram(choice))

    def cheapest_choice(self) -> Dict[str, str]:
        return {n: self.option_labels[n][int(torch.argmin(self.latency_ms[n]))] for n in self.layer_names}

    def smallest_choice(self) -> Dict[str, str]:
        """Each layer's option with the fewest live bytes. With one precision per layer (stage 1) no
        mapping has a lower peak: a tensor is stored at its consumers' widest format (design.md §6.4),
        so narrowing any layer never makes a tensor larger."""
        return {n: self.option_labels[n][int(torch.argmin(self.live_bytes[n]))] for n in self.layer_names}

    # -- the loss ---------------------------------------------------------------------------------
    def loss(self, model: nn.Module, weight: float, latency_target_ms: Optional[float] = None,
             memory_budget_kb: Optional[float] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        lat = self.expected_latency_ms(model)
        if latency_target_ms is None:
            lat_term = lat / self.latency_ref_ms
        else:
            lat_term = torch.relu(lat - latency_target_ms) / self.latency_ref_ms
        stats = {"exp_latency_ms": float(lat.detach())}
        mem_term = torch.zeros((), device=lat.device)
        if memory_budget_kb is not None:  # the whole-network RAM model is only paid for when it matters
            ram = self.expected_peak_ram_bytes(model)
            budget = memory_budget_kb * 1024.0
            mem_term = torch.relu(ram - budget) / budget
            stats["exp_peak_ram_kb"] = float(ram.detach()) / 1024.0
        loss = weight * (lat_term + mem_term)
        stats["hw_loss"] = float(loss.detach())
        return loss, stats
