"""Every file kind the project reads or writes, by its schema string (docs/file_formats.md).

A file names its kind in ``"schema": "adaptqnet/<kind>/<version>"``; readers check it with
``check_schema`` so a file handed to the wrong tool fails with one line naming the tool that writes
the expected kind. The typed readers and writers live beside the data they describe (the mapping in
``models.mapping``, analysis and latency tables in ``tensor_analysis.files``, run directories in
``Search_CIFAR10.training.run_dir``); the strings live here, once.
"""
from __future__ import annotations

from typing import Any, Mapping

ANALYSIS = "adaptqnet/analysis/1"          # tensor_memory_filter.py (+ dual-core options: ..._dualcore.py)
LUT = "adaptqnet/lut/1"                    # tensor_latency_predictor.py --lut
HARDWARE = "adaptqnet/hardware/1"          # tensor_analysis/hardware/<name>.json
MAPPING = "adaptqnet/mapping/1"            # a search's mapping.json (or a user's own)
PREDICTION = "adaptqnet/prediction/1"      # tensor_latency_predictor.py --output_file
COMPRESSION = "adaptqnet/compression/1"    # compression_calc.py --output_file
SPLIT = "adaptqnet/split/1"                # split.json of every training run
PRETRAIN_CHECKPOINT = "adaptqnet/pretrain/1"
PRETRAIN_SUMMARY = "adaptqnet/pretrain_summary/1"
SUMMARY = "adaptqnet/summary/1"            # summary.json of a search or fine-tuning run
ALPHAS = "adaptqnet/alphas/1"              # alphas.json: π history of a search
DEPLOYMENT = "adaptqnet/deployment/1"      # deployment.json of an integer C export (deploy/export_c.py)
PROFILE = "adaptqnet/profile/1"            # per-op counts of a C export on the target (deploy/profile_m7.py)
PROFILE_OPS = "adaptqnet/profile_ops/1"    # profile_ops.json of a C export: its op table (deploy/profiling.py)
M7_KERNELS = "adaptqnet/m7_kernels/1"      # benchmarks/m7_kernels.py --output_json: the kernels' instruction record

# summary.json "source" of a random search's candidate: part of that search, not a run of its own
RANDOM_CANDIDATE_SOURCE = "random_candidate"

WRITERS = {
    ANALYSIS: "tensor_analysis/tensor_memory_filter.py",
    LUT: "tensor_analysis/tensor_latency_predictor.py --lut",
    HARDWARE: "a hardware profile (tensor_analysis/hardware/)",
    MAPPING: "a search (mapping.json)",
    PREDICTION: "tensor_analysis/tensor_latency_predictor.py --output_file",
    COMPRESSION: "tensor_analysis/compression_calc.py --output_file",
    SPLIT: "a training run (split.json)",
    PRETRAIN_CHECKPOINT: "Search_CIFAR10/pretrain/pretrain_cifar10_mobilenetv2.py",
    PRETRAIN_SUMMARY: "Search_CIFAR10/pretrain/pretrain_cifar10_mobilenetv2.py",
    SUMMARY: "a search run (summary.json)",
    ALPHAS: "a search run (alphas.json)",
    DEPLOYMENT: "deploy/export_c.py (deployment.json)",
    PROFILE: "deploy/profile_m7.py --output_json",
    PROFILE_OPS: "deploy/export_c.py (profile_ops.json in the C folder)",
    M7_KERNELS: "benchmarks/m7_kernels.py --output_json",
}


def kind_of(schema: str) -> str:
    """'adaptqnet/summary/1' → 'adaptqnet/summary/': versions of one kind share the prefix."""
    return schema.rsplit("/", 1)[0] + "/"


def check_schema(doc: Any, expected: str, where: str, what: str = "") -> None:
    """ValueError naming ``where`` unless ``doc`` is a JSON object of the ``expected`` schema."""
    what = what or expected.split("/")[1] + " file"
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: not a {what} (expected a JSON object)")
    if doc.get("schema") != expected:
        raise ValueError(f"{where}: unknown schema {doc.get('schema')!r}; expected {expected!r} "
                         f"(written by {WRITERS.get(expected, 'AdaptQNet')})")
