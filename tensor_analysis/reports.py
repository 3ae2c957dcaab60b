"""Readable text reports of the analysis tools' JSON outputs (per-layer tables and summaries), and
the plain-text table they are made of."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

from .memory import KB


def _model_line(spec: Mapping[str, Any]) -> str:
    keys = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "type")
    return f"{spec.get('type')} ({keys})"


def filter_report(d: Mapping[str, Any]) -> str:
    """The memory filter's table: per layer the live KB at each precision (* = fits) and the allowed
    precisions; then peak RAM per uniform precision and the operators that fit nowhere."""
    precisions = d["precisions"]
    key = "live_inplace" if d["memory_model"] == "inplace_depthwise" else "live"
    limit = d["memory_threshold_kb"] * KB
    rows = []
    for l in d["layers"]:
        cells = [l["name"], l["op"], shape(l["in_shape"]), shape(l["out_shape"]), f"{l['macs'] / 1e6:.2f}",
                 l["params"]]
        for p in precisions:
            b = l["bytes"][p][key]
            cells.append(kb(b) + ("*" if b <= limit else " "))
        cells.append(",".join(l["allowed_precisions"]) + (" (infeasible)" if l.get("infeasible") else "")
                     if l["allowed_precisions"] else "NONE")
        rows.append(cells)
    header = ["layer", "op", "in CxHxW", "out CxHxW", "MMAC", "params"] + [f"{p} KB" for p in precisions] + ["allowed"]
    out = [f"Memory filter: {_model_line(d['model'])}",
           f"threshold {d['memory_threshold_kb']:g} KB (1 KB = 1024 B), memory model: {d['memory_model']} "
           f"(live = bytes alive while the operator runs; * = fits)", "",
           table(rows, header, "lllrrr" + "r" * len(precisions) + "l"), ""]
    t = d["totals"]
    hist: Dict[str, int] = {p: 0 for p in precisions}
    for l in d["layers"]:
        for p in l["allowed_precisions"]:
            hist[p] += 1
    n = len(d["layers"])
    out.append(f"layers: {n}, operators: {t['operators']}, MACs: {t['macs'] / 1e6:.2f} M, params: "
               f"{t['params'] / 1e6:.3f} M ({t['layer_params'] / 1e6:.3f} M in conv/linear layers)")
    out.append("layers allowing each precision: " + ", ".join(f"{p} {hist[p]}/{n}" for p in precisions))
    out.append(table([[p, kb(t["peak_ram_bytes"][p]), t["peak_operator"][p], kb(t["peak_ram_bytes_inplace"][p]),
                       t["peak_operator_inplace"][p], kb(t["flash_bytes"][p])] for p in precisions],
                     ["uniform", "peak KB", "at", "in-place dw KB", "at", "flash KB"], "lrlrlr"))
    if d["infeasible"]:
        out.append("")
        out.append(f"{len(d['infeasible'])} operator(s) fit {d['memory_threshold_kb']:g} KB at no precision:")
        for i in d["infeasible"]:
            out.append(f"  {i['name']}: needs at least {i['min_live_kb']:.1f} KB (at {i['at']})")
    return "\n".join(out)


def dual_report(d: Mapping[str, Any]) -> str:
    """Per layer: single-core allowed precisions, dual-core options that fit, and the fastest of them
    with each unit's share and bytes."""
    dual = d["dual"]
    ua, ub = dual["units"]
    limit = d["memory_threshold_kb"] * KB
    rows = []
    for l in d["layers"]:
        opts = l["dual_options"]
        allowed = l["allowed_dual_options"]
        best = min(allowed, key=lambda k: opts[k]["ms"]) if allowed else None
        cells = [l["name"], l["op"], shape(l["out_shape"]), ",".join(l["allowed_precisions"]) or "NONE",
                 f"{len(allowed)}/{len(opts)}"]
        if best:
            o = opts[best]
            cells += [best, f"{o['ms']:.3f}", kb(o["live"]) + ("*" if o["live"] <= limit else "")]
            cells += [kb(sum(o["bytes"].get(u, [0, 0]))) for u in (ua, ub)]
        else:
            cells += ["-", "-", "-", "-", "-"]
        rows.append(cells)
    header = ["layer", "op", "out CxHxW", "single-core", "dual fit", "fastest fitting dual option", "ms",
              "live KB", f"{ua} in+out KB", f"{ub} in+out KB"]
    out = [f"Dual-core memory filter: {_model_line(d['model'])} on {dual['hardware']} ({ua} + {ub}, clocks "
           + ", ".join(f"{u} {c:g} MHz" for u, c in dual["clock_mhz"].items()) + ")",
           f"threshold {d['memory_threshold_kb']:g} KB, splits {', '.join(dual['splits'])} (fraction of output "
           f"channels on {ua}); option key = unit:precision[c0:c1]", "",
           table(rows, header, "lllllllrrr"), "",
           f"dual-core options: {dual['options']} over {len(d['layers'])} layers, {dual['allowed_options']} fit"]
    if d["infeasible"]:
        out.append(f"{len(d['infeasible'])} operator(s) fit at no single-core precision: "
                   + ", ".join(i["name"] for i in d["infeasible"]))
    return "\n".join(out)


def prediction_report(r: Mapping[str, Any]) -> str:
    rows = []
    for o in r["operators"]:
        rows.append([o["name"], o["op"], o["precision"], o["unit"], shape(o["out_shape"]), f"{o['mmacs']:.3f}",
                     f"{o['ms']:.3f}", kb(o["live_bytes"]), kb(o["flash_bytes"])])
    t = r["totals"]
    out = [f"Latency prediction: {_model_line(r['model'])} on {r['hardware']} — {r['label']}",
           "clocks: " + ", ".join(f"{u} {c:g} MHz" for u, c in r["clock_mhz"].items()), "",
           table(rows, ["operator", "op", "precision", "unit", "out CxHxW", "MMAC", "ms", "live KB", "flash KB"],
                 "llllrrrrr"), ""]
    out.append(f"latency: {t['latency_ms']:.2f} ms ({t['layers_ms']:.2f} ms layers + {t['fixed_ms']:.2f} ms adds/pooling)")
    out.append(f"MACs: {t['mmacs']:.2f} M ({t['latency_ms'] * 1e-3 * next(iter(r['clock_mhz'].values())) * 1e6 / max(1, t['macs']):.2f}"
               f" cycles/MAC at the first unit's clock)")
    ram_note = "" if t["fits_ram"] is None else f" / {t['ram_limit_bytes'] / KB:g} KB on chip: " + (
        "fits" if t["fits_ram"] else "DOES NOT FIT")
    flash_note = "" if t["fits_flash"] is None else f" / {t['flash_limit_bytes'] / KB:g} KB: " + (
        "fits" if t["fits_flash"] else "DOES NOT FIT")
    out.append(f"peak RAM: {kb(t['peak_ram_bytes'])} KB layer-wise, {kb(t['peak_ram_bytes_inplace'])} KB with "
               f"in-place depthwise{ram_note}")
    out.append(f"flash: {kb(t['flash_bytes'])} KB{flash_note}")
    out.append("units: " + "; ".join(f"{u} busy {v['busy_ms']:.2f} ms, idle {v['idle_ms']:.2f} ms "
                                     f"({100 * v['utilization']:.0f}%)" for u, v in t["units"].items()))
    return "\n".join(out)


def compression_report(c: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    rows = [[r["name"], r["op"], r["stage"], r["params"], r["precision"], kb(r["bytes"]), kb(r["fp32_bytes"]),
             f"{r['ratio']:.2f}x"] for r in c["layers"]]
    out = [f"Compression: {_model_line(spec)}", "",
           table(rows, ["layer", "op", "stage", "params", "precision", "KB", "fp32 KB", "ratio"], "lllrlrrr"), ""]
    out.append(f"model size: {kb(c['size_bytes'])} KB vs {kb(c['fp32_size_bytes'])} KB in FP32: "
               f"{c['ratio']:.2f}x (weights alone: {kb(c['weight_bytes'])} KB, {c['weight_ratio']:.2f}x; "
               f"size includes per-channel bias/scale)")
    out.append("precision histogram: " + ", ".join(f"{p} {v['layers']} layers / {v['params']} params"
                                                   for p, v in c["by_precision"].items()))

    def group_rows(groups):
        return [[k, g["layers"], g["params"], kb(g["bytes"]), f"{g['ratio']:.2f}x",
                 ", ".join(f"{p}:{n}" for p, n in g["precisions"].items())] for k, g in groups.items()]
    out += ["", table(group_rows(c["by_op"]), ["op kind", "layers", "params", "KB", "ratio", "precisions"], "lrrrrl"),
            "", table(group_rows(c["by_stage"]), ["stage", "layers", "params", "KB", "ratio", "precisions"], "lrrrrl")]
    return "\n".join(out)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], align: Optional[str] = None) -> str:
    """Plain-text table; ``align`` is one 'l'/'r' per column (default: first left, rest right)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    align = align or ("l" + "r" * (len(header) - 1))

    def fmt(r):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()
    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def kb(nbytes: float) -> str:
    return f"{nbytes / KB:.1f}"


def shape(s: Sequence[int]) -> str:
    return "x".join(str(v) for v in s)
