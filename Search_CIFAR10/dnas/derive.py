"""Derivation: from a searched supernet to the network that is fine-tuned and deployed.

The argmax of each layer's α is the derived choice; the search's penalty acts on the *expected* cost
under π, which can sit inside a budget while the argmax network does not, so a greedy repair then
changes as few layers as it must to meet the budgets (``enforce_budgets``); last, a layer left at a
precision that another of its options beats on both bits and latency takes that option
(``replace_dominated``).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

from models.precisions import PRECISIONS

from .hardware_cost import HardwareCost

# each budget flag: what it bounds, in which unit
BUDGETS = {"memory_budget_kb": ("peak RAM", "KB"), "latency_target_ms": ("latency", "ms")}


def budget_figures(hw: HardwareCost, mapping: Mapping[str, object]) -> Dict[str, float]:
    """A mapping's figure for each budget flag: peak RAM in KB, latency in ms."""
    return {"memory_budget_kb": hw.mapping_peak_ram_bytes(mapping) / 1024.0,
            "latency_target_ms": hw.mapping_latency_ms(mapping)}


def best_figures(hw: HardwareCost) -> Dict[str, float]:
    """The best figure the layers' allowed options reach for each budget: the least-memory mapping's peak
    RAM and the fastest mapping's latency (latency adds up per layer, so its minimum is exact)."""
    return {"memory_budget_kb": budget_figures(hw, hw.smallest_choice())["memory_budget_kb"],
            "latency_target_ms": budget_figures(hw, hw.cheapest_choice())["latency_target_ms"]}


def missed_budgets(budgets: Mapping[str, Optional[float]], figures: Mapping[str, float]
                   ) -> List[Tuple[str, float, float]]:
    """(flag, budget, figure) of every budget given in ``budgets`` (flag → value) that ``figures`` exceed."""
    return [(flag, budgets[flag], figures[flag]) for flag in BUDGETS
            if budgets.get(flag) is not None and figures[flag] > budgets[flag]]


def budget_text(flag: str, budget: float, figure: float, best: bool = False) -> str:
    """'--memory_budget_kb 1: the network's peak RAM is 26.00 KB' (``best``: 'the best the allowed
    precisions reach is 26.00 KB of peak RAM')."""
    what, unit = BUDGETS[flag]
    if best:
        return f"--{flag} {budget:g}: the best the allowed precisions reach is {figure:.2f} {unit} of {what}"
    return f"--{flag} {budget:g}: the network's {what} is {figure:.2f} {unit}"


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


def replace_dominated(choice: Mapping[str, str], hw: HardwareCost, memory_budget_kb: Optional[float] = None):
    """Replace every layer's precision that another of its options beats on both counts (more bits and no
    slower by the table) with the fastest such option (the finest of equally fast ones) that keeps the
    network inside the RAM budget; the option taken is then beaten by none.

    The α gradient cannot tell apart precisions whose accuracy differs by less than its noise, so such a
    layer ends wherever the noise of the α steps took it, sometimes at a precision both coarser and slower
    than one it may use (docs/experiments.md §10). A finer grid never represents less (INT2 ⊂ INT4 ⊂ INT8
    on DoReFa's grid), so the change costs no accuracy in principle and saves time; the fine-tuning that
    follows measures it. Only precision options are compared (a stage-2 split option is left alone).
    Returns (mapping, list of changes)."""
    mapping = dict(choice)
    changes = []
    budget = None if memory_budget_kb is None else memory_budget_kb * 1024.0
    for name in hw.layer_names:
        labels = hw.option_labels[name]
        current = mapping[name]
        if current not in PRECISIONS:
            continue
        ms = {label: float(hw.latency_ms[name][i]) for i, label in enumerate(labels)}
        better = sorted((q for q in labels if q in PRECISIONS and PRECISIONS[q].bits > PRECISIONS[current].bits
                         and ms[q] <= ms[current]), key=lambda q: (ms[q], -PRECISIONS[q].bits))
        for option in better:
            trial = {**mapping, name: option}
            ram = hw.mapping_peak_ram_bytes(trial)
            if budget is None or ram <= budget:
                changes.append({"layer": name, "from": current, "to": option,
                                "latency_ms": round(hw.mapping_latency_ms(trial), 4),
                                "peak_ram_kb": round(ram / 1024.0, 2)})
                mapping = trial
                break
    return mapping, changes
