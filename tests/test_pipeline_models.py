"""Issue 8, pipeline side: MobileNetV3-Small/-Large, EfficientNet-B0/-Lite0 through the analysis (MACs
against PyTorch's FlopCounterMode), the tensor-analysis tools with the seed's model flags, the real
stage-1 search script and the stage-2 (dual-core) script, with no model-specific code anywhere."""
import json
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models import build_model
from models.network import mixed_layers
from tensor_analysis import (compression_calc, tensor_latency_predictor, tensor_memory_filter,
                             tensor_memory_filter_dualcore)
from tensor_analysis.analysis_file import load_analysis_json
from tensor_analysis.cli import model_name
from tensor_analysis.graph import analyze_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE1 = os.path.join(REPO, "Search_CIFAR10", "dnas", "dnas_search_cifar10_mbv2.py")
STAGE2 = os.path.join(REPO, "Search_CIFAR10", "dnas_multicore", "dnas_cifar10_search_multicore_mbv2.py")
# the seed's flags for each new model
SEED_FLAGS = {
    "mobilenetv3_small": ["--model_type", "mobilenetv3", "--mode", "small"],
    "mobilenetv3_large": ["--model_type", "mobilenetv3", "--mode", "large"],
    "efficientnet_b0": ["--model_type", "efficientnet", "--model_version", "b0"],
    "efficientnet_lite0": ["--model_type", "efficientnet", "--model_version", "lite0"],
}
WIDTH, SIZE = "0.25", "16"
# stage 2 opens a depthwise conv, an SE conv (with bias, sigmoid after it) and the classifier
STAGE2_LAYERS = "features.2.0.block.1.0,features.2.0.block.2.fc2,classifier.1"


@pytest.mark.parametrize("name", list(SEED_FLAGS))
def test_analysis_macs_equal_flop_counter_and_se_convs_and_classifier_are_counted(name):
    a = analyze_network({"type": name, "input_size": 32, "width_mult": 0.35, "num_classes": 10})
    with torch.device("meta"):
        model = build_model(name, input_size=32, width_mult=0.35, num_classes=10)
    for _, layer in mixed_layers(model):
        layer.set_precision("fp32")
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, 32, 32, device="meta"))
    assert a.macs == counter.get_total_flops() // 2
    flops = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    conv_macs = sum(o.macs for o in a.layers if o.op != "linear")
    linear_macs = sum(o.macs for o in a.layers if o.op == "linear")
    # FlopCounterMode counts every convolution (the SE convs are 1×1 convs) and the classifier (addmm)
    assert flops["aten.convolution"] == 2 * conv_macs and flops["aten.addmm"] == 2 * linear_macs
    se_macs = sum(o.macs for o in a.layers if ".fc" in o.name)
    assert (se_macs > 0) == (name != "efficientnet_lite0")
    assert a.layer_names == [n for n, _ in mixed_layers(model)]
    search_only = ("alpha", "act_clip")
    assert a.model_params == sum(p.numel() for n, p in model.named_parameters() if n.split(".")[-1] not in search_only)


def test_seed_model_flags_name_the_registry_models():
    assert model_name("mobilenetv3", mode="large") == "mobilenetv3_large"
    assert model_name("efficientnet", model_version="lite0") == "efficientnet_lite0"
    assert model_name("efficientnet_b0") == "efficientnet_b0"
    with pytest.raises(ValueError, match="mobilenetv3 needs --mode"):
        model_name("mobilenetv3")


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory, spawn_python):
    """For each model: analysis.json from the memory filter (seed flags), then a 1-epoch stage-1 search
    with the real script; all four run at once, and stage 2 starts on EfficientNet-B0's result as soon
    as it is there."""
    root = tmp_path_factory.mktemp("more_models")
    procs, dirs = {}, {}
    for name, flags in SEED_FLAGS.items():
        folder = root / name
        folder.mkdir()
        analysis = folder / "analysis.json"
        tensor_memory_filter.main([*flags, "--width_mult", WIDTH, "--input_size", SIZE, "--memory_threshold", "256",
                                   "--output_file", str(analysis), "--quiet"])
        extra = ["--model", name] if name == "efficientnet_b0" else []
        dirs[name] = folder / "run"
        procs[name] = spawn_python([STAGE1, "--tensor_analysis_json", str(analysis), "--hardware", "stm32h747",
                                    *extra, "--dataset", "digits", "--epochs", "1", "--warmup_epochs", "0",
                                    "--finetune_epochs", "0",
                                    "--batch_size", "16", "--limit_train", "32", "--limit_eval", "32",
                                    "--output_dir", str(dirs[name]), "--device", "cpu"], cwd=os.path.dirname(STAGE1))
    results = {"stage1": {}, "dirs": dirs, "root": root}
    results["stage1"]["efficientnet_b0"] = _finish(procs.pop("efficientnet_b0"))
    stage2_dir = root / "stage2"
    stage2 = None
    if results["stage1"]["efficientnet_b0"][0] == 0:
        stage2 = spawn_python([STAGE2, "--stage1_dir", str(dirs["efficientnet_b0"]), "--layers", STAGE2_LAYERS,
                               "--epochs", "1", "--warmup_epochs", "0", "--finetune_epochs", "0", "--batch_size", "16",
                               "--output_dir", str(stage2_dir), "--device", "cpu"], cwd=os.path.dirname(STAGE2))
    for name, proc in procs.items():
        results["stage1"][name] = _finish(proc)
    results["stage2"] = _finish(stage2) if stage2 else None
    results["stage2_dir"] = stage2_dir
    return results


@pytest.mark.parametrize("name", list(SEED_FLAGS))
def test_one_epoch_search_with_the_real_script(runs, name):
    code, out, err = runs["stage1"][name]
    assert code == 0, err[-3000:]
    run = runs["dirs"][name]
    analysis = load_analysis_json(str(run.parent / "analysis.json"))
    mapping = json.loads((run / "mapping.json").read_text())
    assert mapping["model"]["type"] == name
    assert list(mapping["layers"]) == [entry["name"] for entry in analysis["layers"]]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"]["type"] == name and summary["stage"] == 1
    assert summary["hardware"]["latency_ms"] > 0 and summary["hardware"]["peak_ram_kb"] > 0
    assert {"supernet_val", "finetuned_val", "test"} <= set(summary["accuracy"])
    assert len(summary["layers"]) == len(analysis["layers"])


def test_stage2_dual_core_search_on_efficientnet_b0(runs):
    assert runs["stage2"] is not None, "stage 1 of efficientnet_b0 failed"
    code, out, err = runs["stage2"]
    assert code == 0, err[-3000:]
    folder = runs["stage2_dir"]
    mapping = json.loads((folder / "mapping.json").read_text())
    stage1 = json.loads((runs["dirs"]["efficientnet_b0"] / "mapping.json").read_text())
    assert list(mapping["layers"]) == list(stage1["layers"])
    dual = load_analysis_json(str(folder / "analysis.json"))
    opened = {entry["name"]: entry for entry in dual["layers"] if entry["name"] in STAGE2_LAYERS.split(",")}
    assert len(opened) == 3 and all(entry["allowed_dual_options"] for entry in opened.values())
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["hardware"]["latency_ms"] > 0


def test_latency_predictor_compression_and_dual_filter_take_the_new_models(runs, tmp_path, capsys):
    mapping = str(runs["dirs"]["mobilenetv3_large"] / "mapping.json")
    assert tensor_latency_predictor.main(["--precision_mapping_file", mapping, "--hardware", "stm32h747",
                                          "--output_file", str(tmp_path / "pred.json"), "--quiet"]) == 0
    pred = json.loads((tmp_path / "pred.json").read_text())
    assert pred["model"]["type"] == "mobilenetv3_large" and pred["totals"]["latency_ms"] > 0
    assert compression_calc.main(["--precision_mapping_file", mapping, "--output_file", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["ratio"] > 1
    out = tmp_path / "dual.json"
    assert tensor_memory_filter_dualcore.main([*SEED_FLAGS["mobilenetv3_small"], "--width_mult", WIDTH,
                                               "--input_size", SIZE, "--memory_threshold", "256",
                                               "--splits", "0.5", "--output_file", str(out), "--quiet"]) == 0
    dual = load_analysis_json(str(out))
    assert dual["model"]["type"] == "mobilenetv3_small"
    assert any(entry["allowed_dual_options"] for entry in dual["layers"] if entry["name"].endswith("fc1"))
    capsys.readouterr()
