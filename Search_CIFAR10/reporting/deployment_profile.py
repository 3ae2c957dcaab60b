"""Per layer, what an integer C export measured on the target against what was predicted for it.

An export profiled with ``deploy/export_c.py --profile`` (or ``deploy/profile_m7.py``) names its
``profile.json`` in ``deployment.json`` (``profile.file``, docs/file_formats.md §12, §13). For every
layer of that profile this module puts side by side:

* the **measured count** (QEMU: guest instructions per image, never cycles or time; a chip's DWT:
  cycles) and the count per MAC;
* the **latency the search used** for that layer at that precision: the run's own ``lut.json`` (the
  table it optimised), in ms;
* a **prediction from a kernel cost-model profile** (a hardware profile, ``kernel_profile``, that models
  the project's own C kernels: ``tensor_analysis/hardware/adaptq_m7.json``), in ms, and converted to the
  counter's unit at a stated ``cycles_per_instruction`` (default: the one the kernel profile declares in
  its top-level ``cycles_per_instruction``, else 1.0) and ``clock_mhz`` (default: the profile's primary
  unit's clock): instructions = ms · clock_MHz · 1000 / cycles per instruction;
* the ratio measured / predicted, per layer and in total.

A missing kernel profile leaves the prediction columns out, with a note saying why.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional

from models.files import read_json
from tensor_analysis.analysis_file import load_analysis_json
from tensor_analysis.graph import analyze_network, as_analysis
from tensor_analysis.lut import build_lut
from tensor_analysis.profiles import load_profile

DEFAULT_KERNEL_PROFILE = "adaptq_m7"
DEFAULT_CYCLES_PER_INSTRUCTION = 1.0


def _number(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def profile_path(deployment_path: str, deployment: Mapping[str, Any]) -> Optional[str]:
    """The profile.json a deployment.json names (relative to its folder), or None."""
    entry = deployment.get("profile")
    if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
        return None
    return os.path.join(os.path.dirname(os.path.abspath(deployment_path)), entry["file"])


def _search_table(run_dir: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(run_dir, "lut.json")
    if not os.path.isfile(path):
        return None
    try:
        lut = read_json(path, "latency table")
    except (ValueError, OSError):
        return None
    return lut if isinstance(lut, Mapping) and isinstance(lut.get("layers"), Mapping) else None


def _kernel_table(kernel_profile: str, run_dir: str, model: Optional[Mapping[str, Any]], clock_mhz: Optional[float]):
    """(the kernel profile's lut, its clock in MHz, None) or (None, None, why not)."""
    try:
        prof = load_profile(kernel_profile)
    except (ValueError, FileNotFoundError, OSError) as e:
        return None, None, (f"no kernel cost-model profile `{kernel_profile}` here ({str(e).splitlines()[0]}), so "
                            f"the prediction columns are left out; give one with `--kernel_profile`")
    analysis_path = os.path.join(run_dir, "analysis.json")
    try:
        if os.path.isfile(analysis_path):
            analysis = as_analysis(load_analysis_json(analysis_path))
        elif isinstance(model, Mapping):
            analysis = analyze_network(dict(model))
        else:
            return None, None, "neither the run's analysis.json nor the profile's model spec is readable: no prediction"
        lut = build_lut(analysis, prof, clock_mhz=clock_mhz)
    except (ValueError, KeyError, OSError) as e:
        return None, None, f"kernel profile `{kernel_profile}` could not predict this network: {e}"
    clock = clock_mhz or _number(lut.get("clock_mhz", {}).get(lut.get("unit")))
    lut["name"] = prof.name
    lut["declared_cpi"] = _number((getattr(prof, "raw", None) or {}).get("cycles_per_instruction"))
    return lut, clock, None


def layer_comparison(deployment_path: str, deployment: Mapping[str, Any],
                     kernel_profile: Optional[str] = DEFAULT_KERNEL_PROFILE,
                     cycles_per_instruction: Optional[float] = None,
                     clock_mhz: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """The comparison of one profiled export, or None when ``deployment`` names no readable profile:
    ``{profile, counter, target, images, kernel_profile, cycles_per_instruction, clock_mhz, rows, totals,
    notes}``; each row ``{layer, kind, precision, macs, count, count_per_mac, search_ms, predicted_ms,
    predicted_count, ratio}`` (None where not known)."""
    path = profile_path(deployment_path, deployment)
    if path is None:
        return None
    notes: List[str] = []
    try:
        doc = read_json(path, "profile")
    except (ValueError, OSError) as e:
        return {"profile": path, "rows": [], "notes": [f"the profile deployment.json names is not readable: {e}"]}
    layers = doc.get("layers") if isinstance(doc, Mapping) else None
    if not isinstance(layers, list):
        return {"profile": path, "rows": [], "notes": ["the profile has no per-layer rows"]}
    counter = str(doc.get("counter", "instructions"))
    run_dir = str(deployment.get("run_dir", ""))
    search = _search_table(run_dir)
    if search is None:
        notes.append(f"the run's lut.json is not readable here (`{run_dir}`): no search latency column")
    kernel, clock, why = (None, None, "no kernel profile was asked for") if not kernel_profile else \
        _kernel_table(kernel_profile, run_dir, doc.get("model"), clock_mhz)
    if why:
        notes.append(why)
    if cycles_per_instruction is None:
        cycles_per_instruction = (kernel or {}).get("declared_cpi") or DEFAULT_CYCLES_PER_INSTRUCTION
    if counter == "instructions":
        factor = None if clock is None else clock * 1e3 / cycles_per_instruction   # instructions per ms
    else:
        factor = None if clock is None else clock * 1e3                             # cycles per ms
    rows = []
    for layer in layers:
        if not isinstance(layer, Mapping):
            continue
        name, precision = str(layer.get("layer")), str(layer.get("precision"))
        count, macs = _number(layer.get("count")), _number(layer.get("macs")) or 0
        search_ms = predicted_ms = None
        for table, key in ((search, "search"), (kernel, "kernel")):
            if table is None:
                continue
            row = table["layers"].get(name)
            value = _number(row.get(precision)) if isinstance(row, Mapping) else \
                _number(section_get(table, "fixed_ops", name))
            if key == "search":
                search_ms = value
            else:
                predicted_ms = value
        predicted_count = None if (predicted_ms is None or factor is None) else predicted_ms * factor
        rows.append({"layer": name, "kind": str(layer.get("kind")), "precision": precision, "macs": int(macs),
                     "count": count, "count_per_mac": (count / macs) if (count is not None and macs) else None,
                     "search_ms": search_ms, "predicted_ms": predicted_ms, "predicted_count": predicted_count,
                     "ratio": (count / predicted_count) if (count is not None and predicted_count) else None})

    def total(key: str) -> Optional[float]:   # over the rows that have the figure (quantize has none)
        values = [r[key] for r in rows if r[key] is not None]
        return sum(values) if values else None
    measured = sum(r["count"] or 0 for r in rows)
    predicted = total("predicted_count")
    partial = [r["layer"] for r in rows if r["predicted_count"] is None] if kernel is not None else []
    if partial:
        notes.append(f"{len(partial)} row(s) have no prediction ({', '.join(partial[:3])}"
                     f"{' ...' if len(partial) > 3 else ''}); the predicted total covers the other rows only")
        predicted = sum(r["predicted_count"] for r in rows if r["predicted_count"] is not None)
        covered = sum(r["count"] or 0 for r in rows if r["predicted_count"] is not None)
    else:
        covered = measured
    totals = {"macs": sum(r["macs"] for r in rows), "count": measured,
              "whole_count": _number((doc.get("total") or {}).get("count")),
              "search_ms": total("search_ms"), "predicted_ms": total("predicted_ms"), "predicted_count": predicted,
              "ratio": (covered / predicted) if predicted else None}
    return {"profile": path, "counter": counter, "target": doc.get("target"), "images": doc.get("images"),
            "kernel_profile": kernel["name"] if kernel is not None else None,
            "cycles_per_instruction": cycles_per_instruction if counter == "instructions" else None,
            "clock_mhz": clock, "rows": rows, "totals": totals, "notes": notes}


def section_get(table: Mapping[str, Any], key: str, name: str) -> Any:
    inner = table.get(key)
    return inner.get(name) if isinstance(inner, Mapping) else None
