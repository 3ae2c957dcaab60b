#!/usr/bin/env python3
"""Export a finished AdaptQNet run trained with --weight_grid symmetric to an ONNX QDQ model for stock tools.

    python deploy/export_onnx.py --run_dir runs/dnas/sym_run --output_file out/sym_run.onnx

It converts the run's network (final.pt + mapping.json, stage 1, stage 2 or a uniform run) to the same
integer network the C export compiles (deploy/build.py), writes it as ONNX (deploy/onnx_export.py:
weights at their own bit width with per-channel scales, activations in int8 containers, fp16 layers via
Cast; opset 21, or 25 when an INT2 layer is present), checks it with onnx.checker, runs it in
onnxruntime (graph optimisation off) on the run's test split and ends by printing its top-1 agreement
with PyTorch (final.pt, eval mode). A layer on the DoReFa grid is refused: retrain with --weight_grid
symmetric, or use deploy/export_c.py, which runs every grid. The file is replaced whole or not at all.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deploy.build import (Run, agreement_count, build_integer_network, compare_with_pytorch, load_run,  # noqa: E402
                          load_test_images)
from deploy.ir import IntegerNetwork  # noqa: E402
from models.files import atomic_write  # noqa: E402
from models.registry import spec_weight_grid  # noqa: E402
from tensor_analysis.cli import OutputKind, Parser, check_outputs, non_negative_int, positive_int, run_cli  # noqa: E402


def _is_onnx_export(path: str) -> bool:
    """A file this tool wrote (an ONNX model from producer 'adaptqnet'), which it may replace."""
    import onnx
    from deploy.onnx_export import PRODUCER
    try:
        return onnx.load(path, load_external_data=False).producer_name == PRODUCER
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


ONNX_FILE = OutputKind("an ONNX model written by this tool", _is_onnx_export)


@dataclass
class OnnxResult:
    run: Run
    network: IntegerNetwork
    output_file: str
    summary: str
    images: int
    ort_vs_pytorch: Optional[float]     # top-1 agreement, fraction
    ort_vs_reference: Optional[float]
    max_logit_difference_pytorch: Optional[float]
    max_logit_difference_reference: Optional[float]
    ort_accuracy: Optional[float]
    seconds: float


def export_run(run_dir: str, output_file: str, agreement_images: Optional[int] = None,
               data_dir: Optional[str] = None, overwrite: bool = False) -> OnnxResult:
    """Convert, write the ONNX file, and compare onnxruntime with PyTorch and the numpy reference on the
    test split (``agreement_images`` None: all of it; 0: skip)."""
    from deploy import onnx_export
    start = time.monotonic()
    check_outputs([("--output_file", output_file, ONNX_FILE)], [("--run_dir", run_dir)], overwrite)
    run = load_run(run_dir)
    network = build_integer_network(run)
    metadata = {"model": run.spec, "mapping": run.mapping, "weight_grid": spec_weight_grid(run.spec),
                "run_dir": run.run_dir}
    exported = onnx_export.to_onnx(network, metadata)
    atomic_write(output_file, lambda f: f.write(exported.model.SerializeToString()))
    result = OnnxResult(run, network, output_file, exported.summary(), 0, None, None, None, None, None, 0.0)
    if agreement_images != 0:
        images, labels = load_test_images(run, data_dir)
        n = agreement_count(agreement_images, len(images))
        images, labels = images[:n], labels[:n]
        ort_out = onnx_export.run_ort(onnx_export.ort_session(exported.model), images)[0]
        agreement = compare_with_pytorch(network, run.model, images, labels)
        torch_out, ref_out = agreement.pytorch_logits, agreement.reference_logits
        result.images = n
        result.ort_vs_pytorch = float((ort_out.argmax(1) == torch_out.argmax(1)).mean())
        result.ort_vs_reference = float((ort_out.argmax(1) == ref_out.argmax(1)).mean())
        result.max_logit_difference_pytorch = float(np.abs(ort_out.astype(np.float64) - torch_out).max())
        result.max_logit_difference_reference = float(np.abs(ort_out.astype(np.float64) - ref_out).max())
        result.ort_accuracy = float((ort_out.argmax(1) == labels).mean())
    result.seconds = time.monotonic() - start
    return result


def report(result: OnnxResult) -> str:
    lines = [f"exported {result.run.run_dir} ({result.run.spec.get('type')}, weight grid "
             f"{spec_weight_grid(result.run.spec)}) to {result.output_file}: {result.summary}; onnx.checker passed"]
    if result.ort_vs_pytorch is not None:
        lines.append(f"onnxruntime (graph optimisation off) on {result.images} test images: accuracy "
                     f"{100 * result.ort_accuracy:.2f}%; largest |logit difference| vs PyTorch "
                     f"{result.max_logit_difference_pytorch:.3g}, vs the numpy reference "
                     f"{result.max_logit_difference_reference:.3g} (top-1 agreement with the reference "
                     f"{100 * result.ort_vs_reference:.2f}%): onnxruntime requantises in float, the reference in "
                     f"fixed point, so a value at a rounding boundary may land one LSB apart")
        lines.append(f"onnxruntime top-1 agreement: {100 * result.ort_vs_pytorch:.2f} %")
    return "\n".join(lines)


def build_parser() -> Parser:
    p = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--run_dir", required=True,
                   help="a finished run trained with --weight_grid symmetric: final.pt, mapping.json, args.json, "
                        "split.json and the analysis it was searched with")
    p.add_argument("--output_file", required=True, help="the .onnx file to write (replaced whole or not at all)")
    p.add_argument("--agreement_images", type=non_negative_int, default=None,
                   help="test images on which onnxruntime is compared with PyTorch (default: the whole test split; "
                        "0: skip)")
    p.add_argument("--data_dir", default=None, help="where the run's dataset lives, if not where args.json says")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --output_file even when it is not an ONNX model this tool wrote")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    for package in ("onnx", "onnxruntime"):   # one line, not a traceback, where requirements.txt was skipped
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"{package} is not installed: pip install -r requirements.txt")
    result = export_run(args.run_dir, args.output_file, agreement_images=args.agreement_images,
                        data_dir=args.data_dir, overwrite=args.overwrite)
    print(report(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
