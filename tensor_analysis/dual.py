"""Dual-core analysis (analysis_dual.json): per layer, the ways to split it over two processing units
and the memory each needs (DESIGN.md §5).

An option splits a layer's output channels between the profile's two units (``dual.units``: the
primary first), each at its own precision, or runs the whole layer on the secondary unit. Options are
named by a key that spells them out, ``m7:int8[0:48]+m4:int4[48:96]`` (unit:precision[first
channel:end channel], primary first); the same key indexes the LUT's ``dual.options`` and can be used
as a mapping value (or its object form, analysis.dual_entry).

Memory of an option (the filter's view, analysis.NetworkAnalysis.dual_layer_bytes): each unit reads
the whole input (a depthwise unit: its channel slice) in its own precision, one input copy per distinct
precision, and writes its output slice in its precision; tensors kept for later are counted at the
wider precision. An option is allowed when that fits the threshold.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from models.base import PRECISION_ORDER

from .analysis import KB, NetworkAnalysis, as_analysis, dual_option_key
from .hardware import DEFAULT_SPLITS, dual_options, load_profile, parts_latency


def dual_analysis_json(analysis, profile, memory_threshold_kb: float,
                       precisions: Sequence[str] = PRECISION_ORDER, splits: Sequence[str] = DEFAULT_SPLITS,
                       inplace_depthwise: bool = False, clock_mhz: Optional[float] = None) -> Dict[str, Any]:
    """analysis.json plus, per layer, ``dual_options`` {key: {"live": bytes alive, "ms": latency,
    "bytes": {unit: [input bytes, output bytes]}}} (the key names each unit's precision and channels)
    and ``allowed_dual_options`` (the keys that fit), and a top-level
    ``dual`` section naming the profile, its units and the split ratios. ``ms`` (the option's latency
    on the profile) is there so a reader can see what a split buys; the search takes latencies from
    the LUT."""
    a: NetworkAnalysis = as_analysis(analysis)
    prof = load_profile(profile)
    unit_a, unit_b = prof.dual_units
    d = a.to_json(memory_threshold_kb, precisions, inplace_depthwise)
    threshold = memory_threshold_kb * KB
    precisions = d["precisions"]
    counts = {"options": 0, "allowed": 0}
    for entry, op in zip(d["layers"], a.layers):
        options, allowed = {}, []
        for parts in dual_options(a, op, precisions, prof, splits, clock_mhz):
            key = dual_option_key(parts)
            b = a.dual_layer_bytes(op, parts, inplace_depthwise)
            ms, busy = parts_latency(a, op, parts, prof, clock_mhz)
            options[key] = {"live": b["live"], "ms": round(ms, 6),
                            "bytes": {u: [v["input"], v["output"]] for u, v in b["units"].items()}}
            if b["live"] <= threshold:
                allowed.append(key)
        entry["dual_options"] = options
        entry["allowed_dual_options"] = allowed
        counts["options"] += len(options)
        counts["allowed"] += len(allowed)
    d["dual"] = {"hardware": prof.name, "units": [unit_a, unit_b], "splits": list(splits),
                 "clock_mhz": prof.clocks(clock_mhz), "options": counts["options"],
                 "allowed_options": counts["allowed"]}
    return d
