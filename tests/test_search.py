"""Stage 1: the search loop's contracts and the real script end to end on tiny data."""
import csv
import io
import json
import os

import pytest
import torch

from models import build_model, formats
from models.files import load_checkpoint, save_checkpoint
from models.mapping import mapping_document, read_mapping
from models.network import (arch_parameters, derive_fixed_network, derive_mapping, mixed_layers, set_mode,
                            weight_parameters)
from models.precisions import PRECISIONS
from Search_CIFAR10.dnas.derive import replace_dominated
from Search_CIFAR10.dnas.hardware_cost import HardwareCost
from Search_CIFAR10.dnas.random_baseline import best_reachable, draw_mappings
from Search_CIFAR10.dnas.search import (SearchSettings, alpha_step, frozen_bn_stats, progressive_min_bits,
                                        temperature_at, weight_step)
from Search_CIFAR10.training.runtime import setup_runtime
from tensor_analysis.analysis_file import analysis_document
from tensor_analysis.graph import analyze_network
from tensor_analysis.lut import build_lut

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "Search_CIFAR10", "dnas", "dnas_search_cifar10_mbv2.py")
SPEC = {"type": "mobilenetv2", "num_classes": 10, "width_mult": 0.1, "input_size": 16}


def tiny_model(**kw):
    return build_model("mobilenetv2", **{k: v for k, v in SPEC.items() if k != "type"}, **kw)


@pytest.fixture(scope="module")
def analysis_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("analysis")
    net = analyze_network(tiny_model().spec)
    doc = analysis_document(net, memory_threshold_kb=1024)
    path = folder / "analysis.json"
    path.write_text(json.dumps(doc))
    lut = build_lut(net, "stm32h747")
    lut_path = folder / "lut.json"
    lut_path.write_text(json.dumps(lut))
    return {"analysis": str(path), "lut": str(lut_path), "doc": doc, "lut_doc": lut, "net": net}


class Batches:
    """A loader over fixed random batches with the DeviceLoader interface the loop uses."""

    def __init__(self, n_batches=2, batch=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.batches = [(torch.randn(batch, 3, 16, 16, generator=g), torch.randint(0, 10, (batch,), generator=g))
                        for _ in range(n_batches)]

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def _hw(model, files):
    return HardwareCost.from_lut(model, files["lut_doc"], files["doc"], files["net"])


def test_cost_only_loss_drives_every_layer_to_its_cheapest_precision(analysis_files):
    model = tiny_model()
    hw = _hw(model, analysis_files)
    opt = torch.optim.Adam(arch_parameters(model), lr=0.1)
    for _ in range(150):
        loss, _ = hw.loss(model, weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert derive_mapping(model) == hw.cheapest_choice()
    # on Cortex-M the cheapest precision is int8 (lower bits unpack, floats are slower)
    assert set(derive_mapping(model).values()) == {"int8"}


def test_latency_target_penalises_only_the_excess(analysis_files):
    model = tiny_model()
    hw = _hw(model, analysis_files)
    expected = float(hw.expected_latency_ms(model).detach())
    loss, _ = hw.loss(model, weight=1.0, latency_target_ms=expected * 2)
    assert float(loss.detach()) == 0.0
    loss, _ = hw.loss(model, weight=1.0, latency_target_ms=expected / 2)
    assert float(loss.detach()) == pytest.approx(expected / 2 / hw.latency_ref_ms, rel=1e-5)


def test_alpha_step_leaves_weights_and_bn_unchanged_and_weight_step_leaves_alpha(analysis_files):
    torch.manual_seed(0)
    model = tiny_model(alpha_init="int8_biased")
    model.train()
    hw = _hw(model, analysis_files)
    runtime = setup_runtime(device="cpu")
    settings = SearchSettings(hardware_weight=1.0)
    opt_w = torch.optim.SGD(weight_parameters(model), lr=0.1, momentum=0.9)
    opt_a = torch.optim.Adam(arch_parameters(model), lr=0.1)
    x, y = Batches().batches[0]

    before = {k: v.clone() for k, v in model.state_dict().items()}
    alpha_step(model, x, y, hw, opt_a, settings, runtime)
    after = model.state_dict()
    alpha_keys = {f"{n}.alpha" for n, _ in mixed_layers(model)}
    for k in before:
        if k not in alpha_keys:
            assert torch.equal(before[k], after[k]), f"α step changed {k}"
    assert all(not torch.equal(before[k], after[k]) for k in alpha_keys)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight_step(model, x, y, opt_w, settings, runtime)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in alpha_keys), "weight step changed α"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith(".weight"))
    assert all(p.requires_grad for p in model.parameters())


def test_alpha_forward_does_not_touch_batchnorm_statistics():
    model = tiny_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    with frozen_bn_stats(model):
        model(torch.randn(4, 3, 16, 16))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_forced_alpha_derives_expected_mapping_and_mapping_json_round_trips(tmp_path):
    model = tiny_model()
    names = [n for n, _ in mixed_layers(model)]
    wanted = {n: ("int4", "int8", "fp16", "int2", "fp32")[i % 5] for i, n in enumerate(names)}
    for name, layer in mixed_layers(model):
        layer.alpha.data.fill_(-5.0)
        layer.alpha.data[layer.precisions.index(wanted[name])] = 5.0
    assert derive_mapping(model) == wanted
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(mapping_document(model.spec, wanted)))
    assert read_mapping(json.loads(path.read_text()), str(path), [n for n, _ in mixed_layers(model)])[1] == wanted
    other = dict(wanted)
    other.pop(names[3])
    other["features.99.conv"] = "int8"
    with pytest.raises(ValueError, match=r"missing layers: .*" + names[3].replace(".", r"\.") + r".*unknown layers: features\.99\.conv"):
        read_mapping(mapping_document(model.spec, other), "m.json", [n for n, _ in mixed_layers(model)])
    with pytest.raises(ValueError, match="unknown precision 'int3'"):
        read_mapping({"layers": {names[0]: "int3"}}, "m.json")


def test_derived_fixed_network_equals_supernet_at_one_hot_pi():
    torch.manual_seed(0)
    model = tiny_model()
    model.eval()
    names = [n for n, _ in mixed_layers(model)]
    mapping = {n: ("int8", "int4", "fp16", "int2", "fp32")[i % 5] for i, n in enumerate(names)}
    for name, layer in mixed_layers(model):
        layer.alpha.data.fill_(-1e4)
        layer.alpha.data[layer.precisions.index(mapping[name])] = 1e4
        layer.act_clip.data.uniform_(1.0, 4.0)
    set_mode(model, "composite")
    x = torch.randn(3, 3, 16, 16)
    fixed = derive_fixed_network(model, mapping)
    fixed.eval()
    assert all(layer.mode == "fixed" and layer.precisions == (mapping[n],) for n, layer in mixed_layers(fixed))
    torch.testing.assert_close(fixed(x), model(x), rtol=0, atol=1e-5)


def test_temperature_schedules_and_progressive_unlocking():
    for schedule in ("exponential", "cosine", "linear"):
        assert temperature_at(0, 10, 5.0, 0.5, schedule) == pytest.approx(5.0)
        assert temperature_at(9, 10, 5.0, 0.5, schedule) == pytest.approx(0.5)
        temps = [temperature_at(e, 10, 5.0, 0.5, schedule) for e in range(10)]
        assert temps == sorted(temps, reverse=True)
    assert [progressive_min_bits(e, 4) for e in range(6)] == [16, 8, 4, 2, 0, 0]


# ----------------------------------------------------------------------------------------------------
# The real script
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def run_script(run_python):
    """The stage-1 script from its own folder, as a user runs it."""
    return lambda args, env=None, timeout=240: run_python([SCRIPT, *args], cwd=os.path.dirname(SCRIPT), env=env,
                                                          timeout=timeout)


def tiny_args(files, out, *extra):
    return ["--tensor_analysis_json", files["analysis"], "--latency_lut", files["lut"], "--dataset", "digits",
            "--width_mult", "0.1", "--input_size", "16", "--epochs", "2", "--warmup_epochs", "1",
            "--finetune_epochs", "1", "--batch_size", "16", "--limit_train", "48", "--limit_eval", "32",
            "--output_dir", str(out), "--device", "cpu", *extra]


RUN_FILES = ["args.json", "log.csv", "alphas.json", "mapping.json", "summary.json", "split.json", "lut.json",
             "supernet.pt", "final.pt", "checkpoint_last.pt", "training_curves.png", "alpha_evolution.png",
             "precision_map.png"]


def test_two_epoch_run_writes_every_file_and_resume_after_kill_matches(run_script, analysis_files, tmp_path):
    full = tmp_path / "full"
    r = run_script(tiny_args(analysis_files, full))
    assert r.returncode == 0, r.stderr[-3000:]
    for name in RUN_FILES:
        assert (full / name).is_file() and (full / name).stat().st_size > 0, name
    summary = json.loads((full / "summary.json").read_text())
    assert set(summary["accuracy"]) >= {"supernet_val", "derived_val_before_finetune", "finetuned_val", "test"}
    assert summary["hardware"]["latency_ms"] > 0 and summary["hardware"]["peak_ram_kb"] > 0
    log_rows = (full / "log.csv").read_text().strip().splitlines()
    assert len(log_rows) == 1 + 2 + 1
    # final.pt is the best on validation among the derived network and every fine-tuning epoch
    ft_vals = [float(r["val_acc"]) for r in csv.DictReader(io.StringIO((full / "log.csv").read_text()))
               if r["phase"] == "finetune"]
    acc = summary["accuracy"]
    assert acc["finetuned_val"] == max([acc["derived_val_before_finetune"], *ft_vals])
    chosen = summary["finetune_epoch_chosen"]
    assert acc["finetuned_val"] == (acc["derived_val_before_finetune"] if chosen == -1 else ft_vals[chosen])
    mapping = json.loads((full / "mapping.json").read_text())
    assert mapping["schema"] == "adaptqnet/mapping/1" and len(mapping["layers"]) == 53

    # killed (SIGKILL) in the middle of the second search epoch, then resumed
    part = tmp_path / "part"
    r = run_script(tiny_args(analysis_files, part), {"ADAPTQNET_FAULT": "kill@search:1:1"})
    assert r.returncode != 0
    assert load_checkpoint(str(part / "checkpoint_last.pt"))["epoch"] == 1
    r = run_script(["--resume", "--output_dir", str(part)])
    assert r.returncode == 0, r.stderr[-3000:]
    a = load_checkpoint(str(full / "final.pt"))["model"]
    b = load_checkpoint(str(part / "final.pt"))["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((full / "mapping.json").read_text())["layers"] == json.loads((part / "mapping.json").read_text())["layers"]


def _error_line(result):
    lines = [l for l in result.stderr.strip().splitlines() if l.strip() and "Warning" not in l and "warn" not in l]
    return lines[-1] if lines else ""


def test_analysis_for_another_model_is_rejected_before_training(run_script, analysis_files, tmp_path):
    doc = dict(analysis_files["doc"])
    doc["model"] = dict(doc["model"], input_size=32)
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps(doc))
    model = tiny_model()
    ckpt = tmp_path / "pretrained.pt"
    save_checkpoint({"schema": formats.PRETRAIN_CHECKPOINT, "spec": model.spec, "model": model.state_dict()},
                    str(ckpt))
    r = run_script(tiny_args({**analysis_files, "analysis": str(bad)}, tmp_path / "out", "--pretrained", str(ckpt)))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "another model or input size" in _error_line(r) and "input_size 32" in _error_line(r)
    assert not (tmp_path / "out" / "checkpoint_last.pt").exists()


def test_lut_missing_layers_is_rejected(run_script, analysis_files, tmp_path):
    lut = json.loads(json.dumps(analysis_files["lut_doc"]))
    del lut["layers"]["features.3.conv.1.0"]
    bad = tmp_path / "lut.json"
    bad.write_text(json.dumps(lut))
    r = run_script(tiny_args({**analysis_files, "lut": str(bad)}, tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "features.3.conv.1.0" in _error_line(r)


def test_mismatched_pretrained_checkpoint_is_rejected(run_script, analysis_files, tmp_path):
    other = build_model("mobilenetv2", num_classes=10, width_mult=0.25, input_size=16)
    ckpt = tmp_path / "other.pt"
    save_checkpoint({"schema": formats.PRETRAIN_CHECKPOINT, "spec": other.spec, "model": other.state_dict()},
                    str(ckpt))
    r = run_script(tiny_args(analysis_files, tmp_path / "out", "--pretrained", str(ckpt)))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = _error_line(r)
    assert "--pretrained" in line and "width_mult" in line


def test_nan_loss_stops_with_epoch_and_keeps_last_good_checkpoint(run_script, analysis_files, tmp_path):
    out = tmp_path / "nan"
    r = run_script(tiny_args(analysis_files, out), {"ADAPTQNET_FAULT": "nan@search:1:1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = _error_line(r)
    assert "epoch 1, step 1" in line and "nan" in line.lower()
    ckpt = load_checkpoint(str(out / "checkpoint_last.pt"))
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_expected_peak_equals_exact_peak_at_one_hot_pi_and_reaches_alpha(analysis_files):
    from tensor_analysis.memory import peak_ram_bytes
    model = tiny_model()
    hw = _hw(model, analysis_files)
    names = [n for n, _ in mixed_layers(model)]
    for k, precisions in enumerate((("int8",) * 5, ("fp32", "int4", "int8", "fp16", "int2"))):
        mapping = {n: precisions[(i + k) % 5] for i, n in enumerate(names)}
        for name, layer in mixed_layers(model):
            layer.alpha.data.fill_(-1e4)
            layer.alpha.data[layer.precisions.index(mapping[name])] = 1e4
        exact = peak_ram_bytes(analysis_files["net"], mapping)
        assert float(hw.expected_peak_ram_bytes(model).detach()) == pytest.approx(exact, abs=2)
        assert hw.mapping_peak_ram_bytes(mapping) == exact
    for _, layer in mixed_layers(model):
        layer.alpha.data.zero_()
    hw.expected_peak_ram_bytes(model).backward()
    assert any(layer.alpha.grad is not None and layer.alpha.grad.abs().sum() > 0 for _, layer in mixed_layers(model))


def test_budget_repair_brings_a_derived_mapping_inside_both_budgets(analysis_files):
    from Search_CIFAR10.dnas.derive import enforce_budgets
    model = tiny_model()
    hw = _hw(model, analysis_files)
    names = [n for n, _ in mixed_layers(model)]
    start = {n: "fp32" for n in names}
    int8 = {n: "int8" for n in names}
    budget_kb = hw.mapping_peak_ram_bytes(int8) / 1024 * 0.8      # below the all-INT8 peak
    target = hw.mapping_latency_ms(int8) * 1.10
    repaired, changes = enforce_budgets(start, hw, budget_kb, target)
    # every change starts from the layer's precision at that moment (a layer may change twice)
    current = dict(start)
    for c in changes:
        assert c["from"] == current[c["layer"]] and c["to"] != c["from"]
        current[c["layer"]] = c["to"]
    assert changes and current == repaired
    assert hw.mapping_peak_ram_bytes(repaired) <= budget_kb * 1024
    assert hw.mapping_latency_ms(repaired) <= target
    # a mapping already inside both is left alone
    assert enforce_budgets(repaired, hw, budget_kb, target) == (repaired, [])


def test_a_mapping_is_fine_tuned_without_a_search_and_writes_every_file(run_script, analysis_files, tmp_path):
    uniform = tmp_path / "uniform"
    r = run_script(tiny_args(analysis_files, uniform, "--mapping", "uniform:int4"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--mapping uniform:int4: predicted latency" in r.stdout
    for name in RUN_FILES:
        assert (uniform / name).is_file() and (uniform / name).stat().st_size > 0, name
    summary = json.loads((uniform / "summary.json").read_text())
    assert summary["source"] == "mapping" and summary["precision_histogram"] == {"int4": 53}
    assert "supernet_val" not in summary["accuracy"] and "test" in summary["accuracy"]
    phases = [row["phase"] for row in csv.DictReader(io.StringIO((uniform / "log.csv").read_text()))]
    assert phases == ["finetune"], "nothing is searched"
    layers = json.loads((uniform / "mapping.json").read_text())["layers"]
    assert set(layers.values()) == {"int4"}
    acc = summary["accuracy"]  # final.pt is chosen exactly as in a searched run
    assert acc["finetuned_val"] >= acc["derived_val_before_finetune"]
    # a mapping file (here: that one with two layers changed) is fine-tuned as given
    names = list(layers)
    edited = dict(layers, **{names[0]: "int8", names[-1]: "fp16"})
    path = tmp_path / "edited.json"
    path.write_text(json.dumps({"schema": "adaptqnet/mapping/1", "layers": edited}))
    r = run_script(tiny_args(analysis_files, tmp_path / "edited", "--mapping", str(path)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "edited" / "mapping.json").read_text())["layers"] == edited
    assert json.loads((tmp_path / "edited" / "summary.json").read_text())["precision_histogram"] == {
        "fp16": 1, "int8": 1, "int4": 51}


def test_a_mapping_outside_the_allowed_precisions_is_refused_before_training(run_script, analysis_files, tmp_path,
                                                                             error_line):
    out = tmp_path / "refused"
    line = error_line(run_script(tiny_args(analysis_files, out, "--int_only", "--mapping", "uniform:fp16")))
    assert "--mapping uniform:fp16: 53 layer(s) at a precision the analysis does not allow" in line
    assert "allowed: int8, int4, int2" in line
    assert not (out / "checkpoint_last.pt").exists()
    missing = tmp_path / "short.json"
    missing.write_text(json.dumps({"features.0.0": "int8"}))
    line = error_line(run_script(tiny_args(analysis_files, tmp_path / "short", "--mapping", str(missing))))
    assert "layer names do not match the model: missing layers:" in line


# ----------------------------------------------------------------------------------------------------
# The random-search baseline
# ----------------------------------------------------------------------------------------------------
def test_random_draws_stay_inside_both_budgets_and_repeat_with_their_seed(analysis_files):
    model = tiny_model()
    hw = _hw(model, analysis_files)
    names = [n for n, _ in mixed_layers(model)]
    int8 = {n: "int8" for n in names}
    budget_kb = hw.mapping_peak_ram_bytes(int8) / 1024          # INT8's peak: every float layer at the peak is out
    target = hw.mapping_latency_ms({n: "int4" for n in names})  # slower precisions than INT4's mix are out
    drawn, draws = draw_mappings(hw, 6, seed=3, memory_budget_kb=budget_kb, latency_target_ms=target)
    assert len(drawn) == 6 and draws >= 6 and len({tuple(m.items()) for m in drawn}) == 6
    for m in drawn:
        assert set(m) == set(names) and all(p in hw.option_labels[n] for n, p in m.items())
        assert hw.mapping_peak_ram_bytes(m) <= budget_kb * 1024 and hw.mapping_latency_ms(m) <= target
    assert draw_mappings(hw, 6, seed=3, memory_budget_kb=budget_kb, latency_target_ms=target) == (drawn, draws)
    assert draw_mappings(hw, 6, seed=4, memory_budget_kb=budget_kb, latency_target_ms=target)[0] != drawn
    least_ram, fastest = best_reachable(hw)
    with pytest.raises(ValueError, match=rf"--memory_budget_kb .*no allowed mapping fits; the least peak RAM "
                                         rf"reachable is {least_ram / 1024:.1f} KB"):
        draw_mappings(hw, 2, seed=0, memory_budget_kb=least_ram / 1024 * 0.99)
    with pytest.raises(ValueError, match=rf"fastest reachable is {fastest:.2f} ms"):
        draw_mappings(hw, 2, seed=0, latency_target_ms=fastest * 0.99)
    with pytest.raises(ValueError, match="no mapping drawn inside the budgets in 50 uniform draws"):
        draw_mappings(hw, 2, seed=0, latency_target_ms=fastest * 1.0001, max_draws=50)


def _dominated(mapping, hw, budget_bytes=None):
    """Layers with an option of more bits, no slower, whose swap keeps the RAM budget."""
    out = []
    for n in hw.layer_names:
        labels = hw.option_labels[n]
        ms = dict(zip(labels, hw.latency_ms[n].tolist()))
        for q in labels:
            trial = {**mapping, n: q}
            if (PRECISIONS[q].bits > PRECISIONS[mapping[n]].bits and ms[q] <= ms[mapping[n]]
                    and (budget_bytes is None or hw.mapping_peak_ram_bytes(trial) <= budget_bytes)):
                out.append(n)
                break
    return out


def test_derivation_replaces_a_precision_beaten_on_bits_and_latency_within_the_ram_budget(analysis_files):
    model = tiny_model()
    hw = _hw(model, analysis_files)
    names = [n for n, _ in mixed_layers(model)]
    int2 = {n: "int2" for n in names}
    assert _dominated(int2, hw)  # on the Cortex-M7 INT2 is slower than INT8: every layer has a better option
    budget_bytes = hw.mapping_peak_ram_bytes({n: "int4" for n in names})
    for budget in (None, budget_bytes):
        replaced, changes = replace_dominated(int2, hw, None if budget is None else budget / 1024)
        assert [c["layer"] for c in changes] == [n for n in names if replaced[n] != "int2"] and changes
        for n in names:
            ms = dict(zip(hw.option_labels[n], hw.latency_ms[n].tolist()))
            assert PRECISIONS[replaced[n]].bits >= 2 and ms[replaced[n]] <= ms["int2"]
        assert hw.mapping_latency_ms(replaced) < hw.mapping_latency_ms(int2)
        assert _dominated(replaced, hw, budget) == []
        if budget is not None:
            assert hw.mapping_peak_ram_bytes(replaced) <= budget
    # with the RAM budget some layers must stay coarse; without it, none is beaten any more
    assert replace_dominated(int2, hw, budget_bytes / 1024)[0] != replace_dominated(int2, hw)[0]
    drawn, _ = draw_mappings(hw, 4, seed=1, memory_budget_kb=budget_bytes / 1024, replace_dominated_layers=True)
    assert all(_dominated(m, hw, budget_bytes) == [] and hw.mapping_peak_ram_bytes(m) <= budget_bytes for m in drawn)


def test_random_search_fine_tunes_each_draw_and_tests_only_the_chosen_one(run_python, analysis_files, tmp_path):
    from Search_CIFAR10.dnas.random_baseline import dnas_epoch_equivalents
    assert dnas_epoch_equivalents(epochs=4, warmup_epochs=1, finetune_epochs=2) == 9  # 1 + 2·3 + 2
    out = tmp_path / "random"
    script = os.path.join(REPO, "Search_CIFAR10", "dnas", "random_search.py")
    # one DNAS run with these flags is 1 + 2·1 + 1 = 4 epoch equivalents: 4 candidates of 1 epoch
    r = run_python([script, *tiny_args(analysis_files, out)], cwd=os.path.dirname(script), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    stats = summary["random_search"]
    assert summary["source"] == "random" and stats["candidates"] == 4 and stats["epoch_equivalents"] == 4
    candidates = sorted((out / "candidates").iterdir())
    assert len(candidates) == 4
    vals = []
    for folder in candidates:
        cand = json.loads((folder / "summary.json").read_text())
        assert "test" not in cand["accuracy"], "only the chosen candidate meets the test split"
        vals.append(cand["accuracy"]["finetuned_val"])
    assert stats["candidate_val"] == vals and summary["accuracy"]["finetuned_val"] == max(vals)
    chosen = candidates[stats["chosen"]]
    assert (json.loads((out / "mapping.json").read_text())["layers"]
            == json.loads((chosen / "mapping.json").read_text())["layers"])
    assert 0 <= summary["accuracy"]["test"] <= 100 and (out / "final.pt").is_file()
