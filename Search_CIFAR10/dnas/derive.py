"""Derivation: from a searched supernet to the network that is fine-tuned and deployed.

The argmax of each layer's α is the derived choice; the search's penalty acts on the *expected* cost
under π, which can sit inside a budget while the argmax network does not, so a greedy repair then
changes as few layers as it must to meet the budgets (``enforce_budgets``).
"""
from __future__ import annotations

from typing import Mapping, Optional

from .hardware_cost import HardwareCost


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
