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

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from models.base import mixed_layers

REFERENCE_PRECISION = "int8"


@dataclass
class HardwareCost:
    """Per-layer cost vectors (aligned with each layer's α) plus what the search does not choose."""

    layer_names: List[str]
    latency_ms: Dict[str, torch.Tensor]        # per layer, per α entry
    live_bytes: Dict[str, torch.Tensor]        # per layer, per α entry: bytes alive while it runs
    fixed_ms: float = 0.0                      # residual adds, pooling, ...: not searched
    latency_ref_ms: float = 1.0
    fixed_live_bytes: float = 0.0              # largest non-searchable operator's live bytes
    option_labels: Dict[str, List[str]] = field(default_factory=dict)

    @classmethod
    def from_lut(cls, model: nn.Module, lut: Mapping, analysis: Mapping) -> "HardwareCost":
        """Stage 1: α entries are precisions; latency from the LUT, live bytes from analysis.json."""
        layers = list(mixed_layers(model))
        lut_layers = lut.get("layers", {})
        ana_layers = {entry["name"]: entry for entry in analysis.get("layers", [])}
        problems = []
        for name, layer in layers:
            for src, table, what in (("latency table", lut_layers, "ms"), ("analysis", ana_layers, "bytes")):
                if name not in table:
                    problems.append(f"{src} has no layer {name}")
        if problems:
            more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
            raise ValueError("; ".join(problems[:8]) + more)
        latency, live, labels = {}, {}, {}
        ref = float(lut.get("fixed_ms", 0.0))
        for name, layer in layers:
            row = lut_layers[name]
            live_row = ana_layers[name].get("live", ana_layers[name].get("bytes", {}).get("live", {}))
            missing = [p for p in layer.precisions if p not in row or p not in live_row]
            if missing:
                raise ValueError(f"layer {name}: no latency or live-bytes entry for {', '.join(missing)} "
                                 f"(latency table has {sorted(row)}, analysis has {sorted(live_row)})")
            latency[name] = torch.tensor([float(row[p]) for p in layer.precisions])
            live[name] = torch.tensor([float(live_row[p]) for p in layer.precisions])
            labels[name] = list(layer.precisions)
            ref += float(row[REFERENCE_PRECISION]) if REFERENCE_PRECISION in row else float(min(row.values()))
        fixed_live = max((float(op.get("live_bytes", 0)) for op in analysis.get("fixed_ops", [])), default=0.0)
        return cls([n for n, _ in layers], latency, live, float(lut.get("fixed_ms", 0.0)), ref, fixed_live, labels)

    def to(self, device) -> "HardwareCost":
        self.latency_ms = {k: v.to(device) for k, v in self.latency_ms.items()}
        self.live_bytes = {k: v.to(device) for k, v in self.live_bytes.items()}
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
        """Max over layers of the expected live bytes: the gradient goes to the layer at the peak,
        which is the one whose precision must drop for the network to fit."""
        per_layer = torch.stack([layer.expected_cost(self.live_bytes[name]) for name, layer in self._layers(model)])
        return torch.clamp_min(per_layer.max(), self.fixed_live_bytes)

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

    def mapping_peak_ram_bytes(self, choice: Mapping[str, str]) -> float:
        return max(max(self._pick(self.live_bytes, choice)), self.fixed_live_bytes)

    def cheapest_choice(self) -> Dict[str, str]:
        return {n: self.option_labels[n][int(torch.argmin(self.latency_ms[n]))] for n in self.layer_names}

    # -- the loss ---------------------------------------------------------------------------------
    def loss(self, model: nn.Module, weight: float, latency_target_ms: Optional[float] = None,
             memory_budget_kb: Optional[float] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        lat = self.expected_latency_ms(model)
        ram = self.expected_peak_ram_bytes(model)
        if latency_target_ms is None:
            lat_term = lat / self.latency_ref_ms
        else:
            lat_term = torch.relu(lat - latency_target_ms) / self.latency_ref_ms
        mem_term = torch.zeros((), device=lat.device)
        if memory_budget_kb is not None:
            budget = memory_budget_kb * 1024.0
            mem_term = torch.relu(ram - budget) / budget
        loss = weight * (lat_term + mem_term)
        stats = {"exp_latency_ms": float(lat.detach()), "exp_peak_ram_kb": float(ram.detach()) / 1024.0,
                 "hw_loss": float(loss.detach())}
        return loss, stats
