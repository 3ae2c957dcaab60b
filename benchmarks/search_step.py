"""Time one training step of the search modes against plain FP32 and fixed-INT8 QAT.

All four configurations use the same model, input and batch, and run round-robin (one step of each in
turn) so that load from other processes on a shared machine hits them alike; each figure is the
median over ``--steps`` timed steps after ``--warmup`` untimed ones (the first steps include
torch.compile's compilation). The last line is the figure the project tracks:

    search_step_ratio_vs_int8_qat: X.XX      (composite step time / fixed-INT8 QAT step time)

Run: ``make bench`` or ``python benchmarks/search_step.py --help``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models import build_model  # noqa: E402
from models.mixture import COMPILE_MODES, compile_enabled, set_compile  # noqa: E402
from models.network import apply_mapping, mixed_layers, set_mode  # noqa: E402
from tensor_analysis.cli import Parser, non_negative_int, positive_float, positive_int, run_cli  # noqa: E402

CONFIGS = (
    ("fp32", "plain FP32 (every layer fixed at fp32)"),
    ("int8_qat", "fixed INT8 QAT (every layer fixed at int8)"),
    ("composite", "search, composite mode (5 precisions)"),
    ("exact", "search, exact mode (5 precisions)"),
)


def build_config(config: str, args) -> torch.nn.Module:
    torch.manual_seed(args.seed)  # same initial weights for every configuration
    model = build_model(args.model, width_mult=args.width_mult, input_size=args.input_size,
                        num_classes=args.num_classes)
    if config in ("fp32", "int8_qat"):
        precision = "fp32" if config == "fp32" else "int8"
        apply_mapping(model, {name: precision for name, _ in mixed_layers(model)})
    else:
        set_mode(model, config)
    return model.to(args.device).train()


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, compile_mode: str):
    # One SGD optimiser over everything (weights, BN, clips, α): the work of a search step's weight
    # update plus its α update, in one backward.
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        set_compile(compile_mode)  # rows may differ in how the quantizers run
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(steps, n_warmup: int, n_timed: int, device: torch.device):
    """Round-robin: warm-up steps, then timed steps, each configuration in turn."""
    times = {name: [] for name in steps}
    for it in range(n_warmup + n_timed):
        for name, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            if it >= n_warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def parse_args(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenetv2", help="registered model name (default: %(default)s)")
    p.add_argument("--width_mult", type=positive_float, default=0.5, help="width multiplier (default: %(default)s)")
    p.add_argument("--input_size", type=positive_int, default=32, help="input height = width in px (default: %(default)s)")
    p.add_argument("--batch_size", type=positive_int, default=64, help="batch size (default: %(default)s)")
    p.add_argument("--num_classes", type=positive_int, default=10, help="classifier outputs (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=7, help="timed steps per configuration (default: %(default)s)")
    p.add_argument("--warmup", type=non_negative_int, default=2,
                   help="untimed steps per configuration first, which absorb compilation (default: %(default)s)")
    p.add_argument("--compile", choices=COMPILE_MODES, default="auto",
                   help="fuse the quantizers with torch.compile: auto = where a C++ compiler (CPU) or "
                        "Triton (CUDA) is present (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=non_negative_int, default=1,
                   help="torch CPU threads; 0 keeps torch's default. One thread by default: on a shared "
                        "machine OpenMP threads spin-wait on each other and the timings become noise "
                        "(default: %(default)s)")
    p.add_argument("--configs", default=",".join(c for c, _ in CONFIGS),
                   help="comma-separated subset of " + ", ".join(c for c, _ in CONFIGS) +
                        "; the ratio line needs composite and int8_qat (default: all)")
    p.add_argument("--compare_eager", action="store_true",
                   help="when the quantizers are compiled, also time fixed INT8 and composite on the eager "
                        "path (what runs where no compiler is present)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="weights and data seed (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    known = [c for c, _ in CONFIGS]
    chosen = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in chosen if c not in known]
    if bad or not chosen:
        raise ValueError(f"--configs: unknown configuration(s) {', '.join(bad) or '(none given)'}; "
                         f"expected a comma-separated subset of {', '.join(known)}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device: unknown device {args.device!r}; expected e.g. cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {args.device} requested but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    set_compile(args.compile)
    fused = compile_enabled(device)
    rows = [(c, c, args.compile) for c in chosen]
    if args.compare_eager and fused:
        rows += [(c + "/eager", c, "off") for c in ("int8_qat", "composite") if c in chosen]

    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, generator=gen).to(device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen).to(device)
    steps = {row: make_step(build_config(config, args), x, y, mode) for row, config, mode in rows}
    times = time_steps(steps, args.warmup, args.steps, device)

    print(f"model {args.model} width {args.width_mult} input {args.input_size}px batch {args.batch_size} "
          f"classes {args.num_classes} device {device} threads {torch.get_num_threads()} "
          f"torch {torch.__version__}")
    print(f"activation quantizers: {'torch.compile (fused)' if fused else 'eager'} (--compile {args.compile}); "
          f"median of {args.steps} steps after {args.warmup} warm-up, configurations interleaved")
    descr = dict(CONFIGS)
    med = {r: statistics.median(t) for r, t in times.items()}
    ref = med.get("int8_qat")
    fp32 = med.get("fp32")
    print(f"{'config':<16} {'ms/step':>9} {'min':>9} {'max':>9} {'vs int8':>8} {'vs fp32':>8}  description")
    for row, config, mode in rows:
        t = times[row]
        vs8 = f"{med[row] / ref:.2f}" if ref else "-"
        vs32 = f"{med[row] / fp32:.2f}" if fp32 else "-"
        what = descr[config] + (", eager quantizers" if mode == "off" and fused else "")
        print(f"{row:<16} {med[row] * 1e3:9.1f} {min(t) * 1e3:9.1f} {max(t) * 1e3:9.1f} {vs8:>8} {vs32:>8}  {what}")
    if "composite/eager" in med and "int8_qat/eager" in med:
        print(f"eager path: composite / int8_qat = {med['composite/eager'] / med['int8_qat/eager']:.2f}")
    if ref and "composite" in med:
        print(f"search_step_ratio_vs_int8_qat: {med['composite'] / ref:.2f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
