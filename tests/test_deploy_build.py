"""A trained run → the integer network → C (deploy/build.py, deploy/export_c.py): the reference agrees with
PyTorch, the C build is bit-exact with the reference on the host (always) and on the Cortex-M7 under QEMU
(skipped without the toolchain, except with CI=true), stage-2 split layers run part after part, the
Flash and RAM predictions match the build, and bad input ends in one line and a non-zero exit."""
import copy
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from data.splits import load_splits, save_split_info
from deploy import c_export, reference
from deploy.build import (UnsupportedNetwork, build_integer_network, compare_with_pytorch, load_run,
                          load_test_images)
from deploy.export_c import export_run, main as export_main
from deploy.ir import ConvPart, GlobalAvgPool
from models import build_model
from models.dual import apply_dual_mapping, dual_mapping
from models.files import save_checkpoint, write_json_atomic
from models.mapping import mapping_document
from models.network import calibrate_activation_clips, mixed_layers
from models.precisions import PRECISION_ORDER
from tensor_analysis.analysis_file import analysis_document
from tensor_analysis.cli import run_cli
from tensor_analysis.graph import analyze_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE1 = os.path.join(REPO, "Search_CIFAR10", "dnas", "dnas_search_cifar10_mbv2.py")
EXPORT = os.path.join(REPO, "deploy", "export_c.py")
SPEC = {"type": "mobilenetv2", "num_classes": 10, "width_mult": 0.1, "input_size": 16}
DATA = {"dataset": "digits", "split_seed": 0, "limit_eval": 32}
IMAGES = 16
ENV = dict(os.environ, PYTHONPATH=REPO, ADAPTQNET_COMPILE="off", OMP_NUM_THREADS="1")


def run_script(script, *args, timeout=300):
    return subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=REPO)


def error_line(result) -> str:
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


class CliResult:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def export_cli(capsys, *args) -> CliResult:
    """deploy/export_c.py in this process (what the script runs, without a new interpreter's start-up)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(export_main, [str(a) for a in args])
    out = capsys.readouterr()
    return CliResult(exit_.value.code, out.out, out.err)


@pytest.fixture
def m7_toolchain():
    if not c_export.m7_toolchain_available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: arm-none-eabi-gcc, arm-none-eabi-size and qemu-system-arm must be installed")
        pytest.skip("needs arm-none-eabi-gcc and qemu-system-arm")


# ----------------------------------------------------------------------------------------------------
# Run directories
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    """A tiny stage-1 run by the user-facing script whose layers cycle through all five precisions."""
    folder = tmp_path_factory.mktemp("stage1")
    doc = analysis_document(analyze_network(SPEC), memory_threshold_kb=1024)
    for i, layer in enumerate(doc["layers"]):
        layer["allowed_precisions"] = [PRECISION_ORDER[i % 5]]
    (folder / "analysis.json").write_text(json.dumps(doc))
    r = run_script(STAGE1, "--tensor_analysis_json", folder / "analysis.json", "--epochs", "1", "--warmup_epochs", "0",
                   "--finetune_epochs", "0", "--batch_size", "16", "--limit_train", "64", "--limit_eval", "32",
                   "--output_dir", folder / "run", "--device", "cpu", "--compile", "off", "--threads", "1",
                   "--dataset", "digits")
    assert r.returncode == 0, r.stderr[-3000:]
    return folder / "run"


def make_run_dir(folder, model: nn.Module, hardware="stm32h747") -> str:
    """A run directory written by hand for a network no test trains: the files of the run contract."""
    os.makedirs(folder, exist_ok=True)
    spec = model.spec
    mapping = dual_mapping(model)
    save_checkpoint({"spec": spec, "model": model.state_dict()}, os.path.join(folder, "final.pt"))
    write_json_atomic(mapping_document(spec, mapping), os.path.join(folder, "mapping.json"))
    write_json_atomic({**DATA, "data_dir": None, "hardware": hardware}, os.path.join(folder, "args.json"))
    save_split_info(load_splits("digits", split_seed=0, limit_eval=32, image_size=spec["input_size"]),
                    os.path.join(folder, "split.json"))
    write_json_atomic(analysis_document(analyze_network(spec), 1024), os.path.join(folder, "analysis.json"))
    return str(folder)


def random_network(name: str, mapping_of, seed: int = 0, **spec) -> nn.Module:
    """A registered network at ``mapping_of(its layers)``, with BatchNorm statistics and PACT clips that
    make every layer matter."""
    torch.manual_seed(seed)
    model = build_model(name, **spec)
    apply_dual_mapping(model, mapping_of(dict(mixed_layers(model))))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    calibrate_activation_clips(model, torch.randn(8, 3, spec["input_size"], spec["input_size"]))
    model.eval()
    return model


def split_mapping(layers):
    """A stage-2 mapping: splits over two units at different precisions, a depthwise split among them."""
    names = list(layers)
    mapping = {n: ["int8", "int4", "fp16"][i % 3] for i, n in enumerate(names)}
    for n in names[1:4] + names[-2:-1]:  # the first block's layers (dw among them), the head
        c = layers[n].out_channels
        mapping[n] = {"split": 0.5, "units": {"m7": {"precision": "int4", "channels": [0, c // 2]},
                                              "m4": {"precision": "int8", "channels": [c // 2, c]}}}
    return mapping


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    model = random_network("mobilenetv2", split_mapping, **{k: v for k, v in SPEC.items() if k != "type"})
    return make_run_dir(tmp_path_factory.mktemp("split") / "run", model)


# ----------------------------------------------------------------------------------------------------
# The reference against PyTorch, the C build against the reference
# ----------------------------------------------------------------------------------------------------
def assert_logits_agree(agreement):
    """PyTorch rounds activations from float32, the reference in TFLite's fixed point (ir.py), where a
    fused residual add also rounds the projection's output to an int16 step of about 1/200 LSB first: a
    value near a rounding boundary may land one LSB apart, which moves that image's logits by up to a
    few per cent. Most images must stay within 2 % of the logits' scale, and none may be far off."""
    scale = max(float(np.abs(agreement.pytorch_logits).max()), 1.0)
    per_image = np.abs(agreement.reference_logits.astype(np.float64)
                       - agreement.pytorch_logits.astype(np.float64)).max(axis=1)
    assert (per_image <= 0.02 * scale).mean() >= 0.9, np.sort(per_image)[::-1][:5]
    assert per_image.max() <= 0.1 * scale


def test_stage1_run_converts_and_the_reference_agrees_with_pytorch(stage1_run):
    run = load_run(str(stage1_run))
    net = build_integer_network(run)
    computes = {op.compute for op in net.ops if isinstance(op, ConvPart)}
    weight_bits = {op.weight_bits for op in net.ops if isinstance(op, ConvPart) and op.compute == "int"}
    assert computes == {"int", "fp16", "fp32"} and weight_bits == {8, 4, 2}
    assert sum(isinstance(op, GlobalAvgPool) for op in net.ops) == 1
    fused = sum(layer.fused == ["add"] for layer in analyze_network(SPEC).layers)
    assert fused > 0 and sum(bool(op.residual) for op in net.ops if isinstance(op, ConvPart)) == fused
    images, labels = load_test_images(run)
    agreement = compare_with_pytorch(net, run.model, images, labels)
    assert agreement.images == 32 and agreement.top1_agreement >= 0.995
    assert_logits_agree(agreement)
    # the memory model's peak is the arena the planner finds
    from tensor_analysis.memory import peak_ram_bytes
    assert net.arena_bytes == peak_ram_bytes(run.analysis, run.mapping)


def test_split_layers_run_part_after_part_like_the_unsplit_network(split_run):
    run = load_run(split_run)
    net = build_integer_network(run)
    layers = {}
    for op in net.ops:
        if isinstance(op, ConvPart):
            layers.setdefault(op.layer, []).append(op)
    split = {name: parts for name, parts in layers.items() if len(parts) > 1}
    assert len(split) == 4 and any(p.groups > 1 for parts in split.values() for p in parts)
    for parts in split.values():
        assert [p.name.split("@")[1].split(":")[0] for p in parts] == ["m7", "m4"]
    images, labels = load_test_images(run)
    agreement = compare_with_pytorch(net, run.model, images, labels)
    assert agreement.top1_agreement >= 0.995
    assert_logits_agree(agreement)


def test_a_split_at_one_precision_computes_the_unsplit_networks_bytes(tmp_path):
    """Parts run one after the other on one core: split at one precision, a layer's bytes are the
    unsplit layer's."""
    whole = random_network("mobilenetv2", lambda layers: {n: "int4" if i % 2 else "int8" for i, n in enumerate(layers)},
                           **{k: v for k, v in SPEC.items() if k != "type"})
    split = copy.deepcopy(whole)
    layers = dict(mixed_layers(split))
    names = list(layers)
    mapping = dual_mapping(split)
    for n in names[1:4] + names[-2:]:  # a depthwise, a projection with its residual, the head, the classifier
        c, p = getattr(layers[n], "out_channels", None) or layers[n].out_features, mapping[n]
        mapping[n] = {"split": 0.5, "units": {"m7": {"precision": p, "channels": [0, c // 2]},
                                              "m4": {"precision": p, "channels": [c // 2, c]}}}
    apply_dual_mapping(split, mapping)
    nets = {}
    for name, model in (("whole", whole), ("split", split)):
        nets[name] = build_integer_network(load_run(make_run_dir(tmp_path / name, model)))
    assert sum(isinstance(op, ConvPart) for op in nets["split"].ops) == sum(
        isinstance(op, ConvPart) for op in nets["whole"].ops) + 5
    images, _ = load_test_images(load_run(str(tmp_path / "whole")))
    assert np.array_equal(reference.run(nets["whole"], images).view(np.uint32),
                          reference.run(nets["split"], images).view(np.uint32))


def export_and_check(run_dir, out, targets, images=IMAGES, agreement_images=None):
    result = export_run(str(run_dir), str(out), images=images, targets=targets, agreement_images=agreement_images)
    for target in targets:
        h = result.harness[target]
        assert h.returncode == 0, (h.output + h.errors)[-3000:]
        assert h.output.strip().splitlines()[-1] == f"bit-exact: {images}/{images}"
    # what the report reads: the same figures, in the folder it describes
    record = json.loads((out / "deployment.json").read_text())
    assert record["run_dir"] == os.path.abspath(run_dir) and record["images"] == images
    assert {t: (r["passed"], r["bit_exact"], r["images"]) for t, r in record["targets"].items()} == \
        {t: (True, images, images) for t in targets}
    assert [r["predicted_bytes"] for r in record["sizes"]] == [row.predicted for row in result.sizes]
    return result


def test_host_c_is_bit_exact_for_a_stage1_and_a_stage2_network(stage1_run, split_run, tmp_path):
    for name, run_dir in (("stage1", stage1_run), ("split", split_run)):
        export_and_check(run_dir, tmp_path / name, ["host"])
    # fewer images compared than embedded: the comparison's outputs, then the reference's for the rest
    export_and_check(stage1_run, tmp_path / "partial", ["host"], images=8, agreement_images=3)


def test_m7_build_is_bit_exact_and_the_sizes_match_the_analysis(stage1_run, split_run, tmp_path, m7_toolchain):
    for name, run_dir in (("stage1", stage1_run), ("split", split_run)):
        result = export_and_check(run_dir, tmp_path / name, ["m7"])
        for row in result.sizes:
            assert row.measured is not None and abs(row.difference) <= 0.05, (name, row)


def test_mobilenetv1_and_efficientnet_lite0_export_bit_exact(tmp_path):
    models = {
        "v1": random_network("mobilenetv1", lambda layers: {n: ["int4", "int8", "int2"][i % 3]
                                                            for i, n in enumerate(layers)},
                             num_classes=10, width_mult=0.25, input_size=16),
        "lite0": random_network("efficientnet_lite0", lambda layers: {n: "int8" for n in layers},
                                num_classes=10, width_mult=0.25, input_size=16),
    }
    for name, model in models.items():
        run_dir = make_run_dir(tmp_path / name, model)
        export_and_check(run_dir, tmp_path / f"{name}_c", ["host"], images=8, agreement_images=0)


# ----------------------------------------------------------------------------------------------------
# What the command line refuses, and how
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model,operator,script", [("mobilenetv3_small", "hard-swish", True),
                                                   ("efficientnet_b0", "SiLU", False)])
def test_unsupported_model_is_refused_with_one_line_naming_the_operator(tmp_path, capsys, model, operator, script):
    net = random_network(model, lambda layers: {n: "int8" for n in layers}, num_classes=10, width_mult=0.25,
                         input_size=16)
    run_dir = make_run_dir(tmp_path / "run", net)
    with pytest.raises(UnsupportedNetwork, match=operator):
        build_integer_network(load_run(run_dir))
    args = ["--run_dir", run_dir, "--output_dir", tmp_path / "c"]
    r = run_script(EXPORT, *args) if script else export_cli(capsys, *args)  # the script itself once
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert error_line(r).startswith(f"error: {model}: {operator} (")
    assert not (tmp_path / "c").exists()


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_bad_run_directories_give_one_line_and_a_non_zero_exit(stage1_run, tmp_path, capsys):
    cases = []
    missing_final = copy_run(stage1_run, tmp_path / "no_final")
    os.remove(missing_final / "final.pt")
    cases.append(("final.pt is missing", missing_final))
    missing_mapping = copy_run(stage1_run, tmp_path / "no_mapping")
    os.remove(missing_mapping / "mapping.json")
    cases.append(("mapping.json is missing", missing_mapping))
    # a layer's precision changed to fp32: the checkpoint's clips no longer fit (fp32 has none); with
    # nothing else recording the mapping, loading the weights finds it
    other_kind = copy_run(stage1_run, tmp_path / "other_kind")
    doc = json.loads((other_kind / "mapping.json").read_text())
    name = next(n for n, p in doc["layers"].items() if p == "int8")
    doc["layers"][name] = "fp32"
    (other_kind / "mapping.json").write_text(json.dumps(doc))
    checkpoint = torch.load(other_kind / "final.pt", weights_only=True)
    save_checkpoint({"spec": checkpoint["spec"], "model": checkpoint["model"]}, str(other_kind / "final.pt"))
    os.remove(other_kind / "summary.json")
    cases.append(("mapping.json disagrees with final.pt", other_kind))
    # int8 → int4 loads into the same tensors: final.pt records the digest of the mapping it was trained with
    other_bits = copy_run(stage1_run, tmp_path / "other_bits")
    doc["layers"][name] = "int4"
    (other_bits / "mapping.json").write_text(json.dumps(doc))
    cases.append(("mapping.json: does not belong to final.pt's network", other_bits))
    for message, run_dir in cases:
        r = export_cli(capsys, "--run_dir", run_dir, "--output_dir", tmp_path / "out")
        assert r.returncode == 2, (message, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and message in error_line(r), (message, r.stderr)
    r = export_cli(capsys, "--run_dir", tmp_path / "nowhere", "--output_dir", tmp_path / "out")
    assert r.returncode == 2 and "directory not found" in error_line(r)
    r = export_cli(capsys, "--run_dir", stage1_run, "--output_dir", tmp_path / "out", "--images", "0")
    assert r.returncode == 2 and "--images" in error_line(r)
    r = export_cli(capsys, "--run_dir", stage1_run, "--output_dir", tmp_path / "out", "--images", "33")
    assert r.returncode == 2 and error_line(r) == "error: --images 33: the run's test split has only 32 images"
    assert not (tmp_path / "out").exists()


def test_output_folder_is_replaced_whole_or_left_alone(stage1_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "c"
    export_run(str(stage1_run), str(out), images=4, agreement_images=0, measure_sizes=False)
    first = (out / "test_data.c").read_text()
    # a failure while writing leaves the previous export as it was, and no temporary folder behind
    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(c_export, "test_data_sources", broken)
    with pytest.raises(OSError):
        export_run(str(stage1_run), str(out), images=8, agreement_images=0, measure_sizes=False)
    assert (out / "test_data.c").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    monkeypatch.undo()
    export_run(str(stage1_run), str(out), images=8, agreement_images=0, measure_sizes=False)
    assert "#define ADAPTQ_TEST_COUNT 8" in (out / "test_data.h").read_text()
    # a folder holding anything else is not an export: refused, untouched
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    r = export_cli(capsys, "--run_dir", stage1_run, "--output_dir", foreign, "--agreement_images", "0", "--no_sizes")
    assert r.returncode == 2 and "holds files this exporter did not write" in error_line(r)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_arena_over_the_profiles_ram_is_exported_with_a_warning(stage1_run, tmp_path, capsys):
    profile = json.loads(open(os.path.join(REPO, "tensor_analysis", "hardware", "stm32h747.json")).read())
    profile["ram_kb"] = 4
    (tmp_path / "small.json").write_text(json.dumps(profile))
    r = export_cli(capsys, "--run_dir", stage1_run, "--output_dir", tmp_path / "c", "--hardware",
                   tmp_path / "small.json", "--images", "4", "--agreement_images", "0", "--no_sizes")
    assert r.returncode == 0, r.stderr
    warning = error_line(r)
    assert warning.startswith("warning: the arena needs ") and "RAM of 4096 bytes (4.0 KB)" in warning
    assert (tmp_path / "c" / "model.c").is_file()
    assert "top-1 agreement" not in r.stdout and "RAM: activation arena" in r.stdout


def test_help_documents_every_flag(capsys):
    r = export_cli(capsys, "--help")
    assert r.returncode == 0
    for flag in ("--run_dir", "--output_dir", "--images", "--hardware", "--agreement_images", "--data_dir",
                 "--no_sizes", "--run", "--threads"):
        assert flag in r.stdout


def test_profile_goes_into_the_export_folder_and_deployment_json_names_it(stage1_run, tmp_path, m7_toolchain):
    out = tmp_path / "profiled"
    result = export_run(str(stage1_run), str(out), images=4, agreement_images=0, measure_sizes=False,
                        profile=True, profile_images=1)
    record = json.loads((out / "deployment.json").read_text())
    profile = json.loads((out / record["profile"]["file"]).read_text())
    assert profile["schema"] == "adaptqnet/profile/1" and profile["counter"] == "instructions"
    assert record["profile"] == {"file": "profile.json", "target": "qemu-mps2-an500", "counter": "instructions",
                                 "images": 1, "count": profile["total"]["count"], "macs": profile["total"]["macs"]}
    assert result.profile["total"] == profile["total"]
    # without --profile the record says so (an older profile.json left in the folder is not named)
    export_run(str(stage1_run), str(out), images=4, agreement_images=0, measure_sizes=False)
    assert json.loads((out / "deployment.json").read_text())["profile"] is None
