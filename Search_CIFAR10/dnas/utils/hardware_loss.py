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
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from models.base import mixed_layers

REFERENCE_PRECISION = "int8"


def lut_latency_ms(lut: Mapping, mapping: Mapping[str, object]) -> float:
    """Latency of a mapping by the table: what the search optimised, and what a user's measured table
    says. Dual-core entries (option keys or mapping.json objects) come from the table's dual section."""
    return float(lut.get("fixed_ms", 0.0)) + sum(lut_entry_ms(lut, n, e) for n, e in mapping.items())


def lut_entry_ms(lut: Mapping, name: str, entry) -> float:
    """One layer's milliseconds: a precision from ``layers``, a dual-core option from ``dual.options``."""
    if isinstance(entry, str) and ":" not in entry:
        return float(lut["layers"][name][entry])
    if isinstance(entry, Mapping):  # the mapping.json object: {"units": {unit: {precision, channels}}}
        from tensor_analysis.analysis import Part, dual_option_key
        parts = sorted((Part(u, s["precision"], *s["channels"]) for u, s in entry["units"].items()),
                       key=lambda p: p.c0)
        entry = dual_option_key(parts)
    options = lut.get("dual", {}).get("options", {}).get(name, {})
    if entry not in options:
        raise ValueError(f"latency table has no dual-core option {entry!r} for layer {name}"
                         + ("" if "dual" in lut else " (the table has no dual-core section)"))
    return float(options[entry]["ms"])


class ExpectedPeak:
    """Peak RAM as a differentiable function of π: tensor_analysis' memory model (every tensor alive
    while an operator runs, each stored at the widest precision its consumers read) with each
    layer's read/write width replaced by its expectation under π. At one-hot π it is exactly
    ``peak_ram_bytes`` of that mapping; a per-layer estimate is not, because a tensor is stored at
    its *consumer's* precision and residual inputs stay alive across blocks."""

    def __init__(self, analysis, option_labels: Mapping[str, Sequence[str]], inplace_depthwise: bool = False):
        from tensor_analysis.analysis import layer_input_factor, layer_output_factor, normalize_entry
        self.analysis = analysis
        self.inplace = inplace_depthwise
        self.read, self.write = {}, {}
        for name, labels in option_labels.items():
            op = analysis.layer(name)
            parts = [normalize_entry(op, label) for label in labels]
            self.read[name] = torch.tensor([layer_input_factor(op, p) for p in parts])
            self.write[name] = torch.tensor([layer_output_factor(op, p) for p in parts])
        self.elements = {tid: float(t.elements) for tid, t in analysis.tensors.items()}

    def to(self, device) -> "ExpectedPeak":
        self.read = {k: v.to(device) for k, v in self.read.items()}
        self.write = {k: v.to(device) for k, v in self.write.items()}
        return self

    def __call__(self, probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        read = {n: (probs[n] * v).sum() for n, v in self.read.items()}
        write = {n: (probs[n] * v).sum() for n, v in self.write.items()}
        default = torch.tensor(4.0, device=next(iter(read.values())).device)
        factor = self.analysis.resolve_storage_factors(
            lambda op: read[op.name], lambda op: write[op.name],
            lambda vals: vals[0] if len(vals) == 1 else torch.stack(vals).max(), default)
        size = lambda t: self.elements[t] * factor[t]  # noqa: E731
        live = [self.analysis.operator_bytes(op, size, self.inplace)["live"] for op in self.analysis.operators]
        return torch.stack([torch.as_tensor(v, dtype=default.dtype, device=default.device) for v in live]).max()


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
            float(b) for _, b in analysis.mapping_live_bytes(mapping, inplace_depthwise=inplace_depthwise)]
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


def enforce_budgets(choice: Mapping[str, str], hw: HardwareCost, memory_budget_kb: Optional[float] = None,
                    latency_target_ms: Optional[float] = None, max_changes: int = 200):
    """Greedy repair of a derived mapping that misses a budget (the search's penalty acts on the
    *expected* cost under π, which can sit inside a budget while the argmax network does not).

    RAM first: while the peak is over budget, apply the single-layer change that lowers the peak
    most per millisecond it adds. Then latency: while over target, apply the change that saves the
    most time without breaking the RAM budget. Options are the layer's own (allowed) α entries.
    Returns (mapping, list of changes); a budget that no change can reach is left missed (the
    summary says so)."""
    mapping = dict(choice)
    changes = []
    budget = None if memory_budget_kb is None else memory_budget_kb * 1024.0

    def cost(m):
        """latency, peak, and the bytes over budget summed over operators (several operators can
        share the peak, so a single change may lower the excess before it lowers the peak)"""
        per_op = hw.mapping_operator_ram(m)
        excess = sum(max(0.0, b - budget) for b in per_op) if budget is not None else 0.0
        return hw.mapping_latency_ms(m), max(per_op), excess

    lat, ram, excess = cost(mapping)
    while len(changes) < max_changes:
        ram_over = budget is not None and ram > budget
        lat_over = latency_target_ms is not None and lat > latency_target_ms
        if not (ram_over or lat_over):
            break
        best = None
        for name in hw.layer_names:
            for option in hw.option_labels[name]:
                if option == mapping[name]:
                    continue
                trial = dict(mapping)
                trial[name] = option
                t_lat, t_ram, t_excess = cost(trial)
                if ram_over:
                    if t_excess >= excess:
                        continue
                    score = (excess - t_excess) / max(t_lat - lat, 1e-3)
                else:
                    if t_lat >= lat or (budget is not None and t_ram > budget):
                        continue
                    score = lat - t_lat
                if best is None or score > best[0]:
                    best = (score, name, option, t_lat, t_ram, t_excess)
        if best is None:
            break
        _, name, option, lat, ram, excess = best
        changes.append({"layer": name, "from": mapping[name], "to": option,
                        "latency_ms": round(lat, 4), "peak_ram_kb": round(ram / 1024.0, 2)})
        mapping[name] = option
    return mapping, changes
