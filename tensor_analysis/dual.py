"""Dual-core analysis (analysis_dual.json): per layer, the ways to split it over two processing units
and the memory each needs (docs/file_formats.md).

An option splits a layer's output channels between the profile's two units (``dual.units``: the
primary first), each at its own precision, or runs the whole layer on the secondary unit. Options are
named by a key that spells them out, ``m7:int8[0:48]+m4:int4[48:96]`` (unit:precision[first
channel:end channel], primary first); the same key indexes the LUT's ``dual.options`` and can be used
as a mapping value (or its object form, models.mapping.dual_entry).

Memory of an option (the filter's view, memory.dual_layer_bytes): each unit reads
the whole input (a depthwise unit: its channel slice) in its own precision, one input copy per distinct
precision, and writes its output slice in its precision; tensors kept for later are counted at the
wider precision. An option is allowed when that fits the threshold.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from models.mapping import Part, dual_option_key
from models.precisions import PRECISION_ORDER

from .analysis_file import analysis_document
from .graph import NetworkAnalysis, Operator, as_analysis
from .latency import layer_cycles, parts_latency
from .memory import KB, dual_layer_bytes
from .profiles import HardwareProfile, load_profile

DEFAULT_SPLITS = ("0.25", "0.5", "0.75", "balanced")


def _split_channels(c: int, ratio: float) -> Optional[int]:
    if c < 2:
        return None
    return min(c - 1, max(1, int(round(ratio * c))))


def balanced_split(analysis: NetworkAnalysis, op: Operator, pa: str, pb: str, profile: HardwareProfile,
                   clock_mhz: Optional[float] = None) -> Optional[int]:
    """Output channels for the primary unit that equalise the two units' times (rounded, best of the
    neighbours)."""
    a, b = profile.dual_units
    c = op.out_channels
    if c < 2:
        return None
    clocks = profile.clocks(clock_mhz)
    ua, ub = profile.unit(a), profile.unit(b)
    # t(f) is affine in the fraction f: t0 + f·t1
    ta0 = layer_cycles(op, pa, ua, 0.0) / clocks[a]
    ta1 = layer_cycles(op, pa, ua, 1.0) / clocks[a] - ta0
    tb0 = layer_cycles(op, pb, ub, 0.0) / clocks[b]
    tb1 = layer_cycles(op, pb, ub, 1.0) / clocks[b] - tb0
    f = (tb0 + tb1 - ta0) / max(1e-12, ta1 + tb1)
    k0 = min(c - 1, max(1, int(round(f * c))))
    best = min((k for k in (k0 - 1, k0, k0 + 1) if 1 <= k <= c - 1),
               key=lambda k: max(ta0 + ta1 * k / c, tb0 + tb1 * (c - k) / c))
    return best


def dual_options(analysis: NetworkAnalysis, op: Operator, precisions: Sequence[str], profile: HardwareProfile,
                 splits: Sequence[str] = DEFAULT_SPLITS, clock_mhz: Optional[float] = None) -> List[List[Part]]:
    """Every dual-core option of a layer: for each precision pair, the output channels split at each
    ratio (fraction on the primary unit) or balanced by the units' speed; plus the whole layer on the
    secondary unit. The whole layer on the primary unit is the single-core choice, not listed here."""
    a, b = profile.dual_units
    c = op.out_channels
    options, seen = [], set()
    for pa in precisions:
        for pb in precisions:
            for s in splits:
                k = balanced_split(analysis, op, pa, pb, profile, clock_mhz) if s == "balanced" else \
                    _split_channels(c, float(s))
                if k is None:
                    continue
                parts = [Part(a, pa, 0, k), Part(b, pb, k, c)]
                key = dual_option_key(parts)
                if key not in seen:
                    seen.add(key)
                    options.append(parts)
    for pb in precisions:
        options.append([Part(b, pb, 0, c)])
    return options


def parse_splits(text: str) -> List[str]:
    """'0.25,0.5,0.75,balanced' → validated list."""
    out = []
    for item in (s.strip() for s in str(text).split(",")):
        if not item:
            continue
        if item == "balanced":
            out.append(item)
            continue
        try:
            v = float(item)
        except ValueError:
            raise ValueError(f"--splits: {item!r} is neither a ratio in (0, 1) nor 'balanced'") from None
        if not 0 < v < 1:
            raise ValueError(f"--splits: ratio {item} must lie strictly between 0 and 1")
        out.append(item)
    if not out:
        raise ValueError("--splits: expected at least one ratio or 'balanced'")
    return out


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
    d = analysis_document(a, memory_threshold_kb, precisions, inplace_depthwise)
    threshold = memory_threshold_kb * KB
    precisions = d["precisions"]
    counts = {"options": 0, "allowed": 0}
    for entry, op in zip(d["layers"], a.layers):
        options, allowed = {}, []
        for parts in dual_options(a, op, precisions, prof, splits, clock_mhz):
            key = dual_option_key(parts)
            b = dual_layer_bytes(a, op, parts, inplace_depthwise)
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
