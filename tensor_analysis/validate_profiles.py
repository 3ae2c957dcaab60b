"""Check the hardware profiles against published measurements: prints predicted vs published.

* STM32H747 M7 @400 MHz, uniform INT8: the four MobileNetV1 X-CUBE-AI figures in docs/hardware.md §5
  (calibration) and six MobileNetV2 figures from the same model zoo (held out);
* ESP32-S3: the ESP-NN per-kernel cycles/MAC, and the two-core speed-up vs ESP-DL's;
* STM32H747: the balanced M7+M4 split vs the <= 1.31x estimate;
* every profile: whole-network latency of MobileNetV2-1.0-224 per uniform precision (on Cortex-M INT8
  is the fastest integer precision and FP16 is no faster than FP32; on the GAP9-class cluster lower
  bits are faster).

    python tensor_analysis/validate_profiles.py
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from models.precisions import PRECISION_ORDER  # noqa: E402
from tensor_analysis import published  # noqa: E402
from tensor_analysis.cli import Parser, run_cli  # noqa: E402
from tensor_analysis.dual import balanced_split  # noqa: E402
from tensor_analysis.graph import Operator, analyze_network  # noqa: E402
from tensor_analysis.latency import layer_cycles  # noqa: E402
from tensor_analysis.prediction import predict_network  # noqa: E402
from tensor_analysis.profiles import list_profiles, load_profile  # noqa: E402
from tensor_analysis.reports import table  # noqa: E402


def published_vs_predicted(entries, profile="stm32h747", clock_mhz=published.STM32H747_CLOCK_MHZ):
    """[(name, MMACs, published ms, predicted ms, relative error)] for uniform INT8."""
    prof = load_profile(profile)
    rows = []
    for e in entries:
        a = analyze_network(e["spec"])
        ms = predict_network(a, {n: "int8" for n in a.layer_names}, prof, clock_mhz)["totals"]["latency_ms"]
        rows.append((e["name"], a.macs / 1e6, e["ms"], ms, ms / e["ms"] - 1))
    return rows


def esp32s3_kernels():
    unit = load_profile("esp32s3").unit(None)
    rows = []
    for k in published.ESP32S3_KERNELS:
        ho = k["hw"]
        groups = k["cin"] if k["op"] == "dwconv" else 1
        macs = ho * ho * k["cout"] * (k["cin"] // groups) * k["k"] ** 2
        op = Operator(0, k["name"], k["op"], True, [], 0, (k["cin"], k["hw"], k["hw"]), (k["cout"], ho, ho), macs,
                      kernel=(k["k"], k["k"]), groups=groups)
        cpm = layer_cycles(op, "int8", unit) / macs
        rows.append((k["name"], k["cyc_per_mac"], cpm, cpm / k["cyc_per_mac"] - 1))
    return rows


def dual_speedup(profile: str, spec) -> tuple:
    """(single-core ms on the primary unit, balanced-split ms, speed-up) for uniform INT8."""
    prof = load_profile(profile)
    a = analyze_network(spec)
    single = predict_network(a, {n: "int8" for n in a.layer_names}, prof)["totals"]["latency_ms"]
    ua, ub = prof.dual_units
    mapping = {}
    for op in a.layers:
        k = balanced_split(a, op, "int8", "int8", prof)
        mapping[op.name] = "int8" if k is None else {
            "units": {ua: {"precision": "int8", "channels": [0, k]},
                      ub: {"precision": "int8", "channels": [k, op.out_channels]}}}
    dual = predict_network(a, mapping, prof)["totals"]["latency_ms"]
    return single, dual, single / dual


def precision_sweep(spec):
    a = analyze_network(spec)
    rows = []
    for name in list_profiles():
        prof = load_profile(name)
        ms = {p: predict_network(a, {n: p for n in a.layer_names}, prof)["totals"]["latency_ms"]
              for p in PRECISION_ORDER}
        rows.append([name] + [f"{ms[p]:.1f}" for p in PRECISION_ORDER])
    return rows


def main(argv=None):
    Parser(description=__doc__).parse_args(argv)
    fmt = lambda rows: [[n, f"{m:.1f}", f"{p:.2f}", f"{q:.2f}", f"{100 * e:+.1f}%"] for n, m, p, q, e in rows]  # noqa: E731
    head = ["network", "MMAC", "published ms", "predicted ms", "error"]
    print("STM32H747 M7 @400 MHz, uniform INT8, X-CUBE-AI measurements (calibration, docs/hardware.md §5):")
    print(table(fmt(published_vs_predicted(published.STM32H747_MOBILENETV1)), head))
    print("\nSame board, MobileNetV2 (held out: stm32ai-modelzoo mobilenetv2 README):")
    print(table(fmt(published_vs_predicted(published.STM32H747_MOBILENETV2_HELD_OUT)), head))
    print("\nESP32-S3 @240 MHz, ESP-NN INT8 kernels (cycles/MAC):")
    print(table([[n, f"{p:.2f}", f"{q:.2f}", f"{100 * e:+.1f}%"] for n, p, q, e in esp32s3_kernels()],
                ["kernel", "published", "predicted", "error"]))
    d = published.ESP32S3_DUAL_SPEEDUP
    s, du, x = dual_speedup("esp32s3", d["spec"])
    print(f"\nESP32-S3 two cores, balanced split, MobileNetV2-1.0-224: {s:.1f} -> {du:.1f} ms = {x:.2f}x "
          f"(published {d['speedup']:.2f}x, {d['source']})")
    s, du, x = dual_speedup("stm32h747", published.ESP32S3_DUAL_SPEEDUP["spec"])
    print(f"STM32H747 M7+M4, balanced split, MobileNetV2-1.0-224: {s:.1f} -> {du:.1f} ms = {x:.2f}x "
          f"(docs/hardware.md §5 estimate: <= {published.STM32H747_DUAL_MAX_SPEEDUP}x before synchronisation)")
    print("\nMobileNetV2-1.0-224 (1000 classes), uniform precision, ms at each profile's default clock:")
    print(table(precision_sweep(published.ESP32S3_DUAL_SPEEDUP["spec"]), ["profile"] + list(PRECISION_ORDER)))
    return 0


if __name__ == "__main__":
    run_cli(main)
