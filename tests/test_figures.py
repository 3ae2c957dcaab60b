"""Plots of a run: each writes a real PNG for realistic inputs, keeps the precision colours fixed, and
rejects bad input with a ValueError that names the argument."""
import math
import os
import random

import matplotlib.image as mpimg
import numpy as np
import pytest

from Search_CIFAR10.reporting import figures as viz
from Search_CIFAR10.reporting.figures.common import IDLE_COLOR, SECONDARY_COLOR, new_figure
from Search_CIFAR10.reporting.figures.pareto import _place_labels
from Search_CIFAR10.reporting.figures.training_curves import _phase_positions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def mbv2_layers():
    """MobileNetV2's 53 quantizable layers as torchvision names them (module paths)."""
    layers = [("features.0.0", "conv"), ("features.1.conv.0.0", "dwconv"), ("features.1.conv.1", "pwconv")]
    for block in range(2, 18):
        layers += [(f"features.{block}.conv.0.0", "pwconv"), (f"features.{block}.conv.1.0", "dwconv"),
                   (f"features.{block}.conv.2", "pwconv")]
    return layers + [("features.18.0", "pwconv"), ("classifier.1", "linear")]


def read_png(path, min_width=300, min_height=200):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, f"{path} is not a PNG"
    image = mpimg.imread(path)
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height, (width, height)
    assert image[..., :3].std() > 0.05, "the image is blank"
    return image


def pixels_of(image, hex_color, tolerance=2 / 255):
    rgb = np.array([int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(image[..., :3] - rgb) <= tolerance).all(axis=-1).sum())


def no_temp_files(folder):
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp_")]


def alphas_history(layers, epochs, seed=0):
    rng = random.Random(seed)
    precisions = {name: (["fp32", "fp16", "int8", "int4", "int2"] if i % 9 == 0 else ["int8", "int4", "int2"])
                  for i, (name, _) in enumerate(layers)}
    history = []
    for epoch in range(epochs):
        probs = {}
        for name, _ in layers:
            logits = [rng.gauss(0, 1 + epoch) for _ in precisions[name]]
            top = max(logits)
            weights = [math.exp(v - top) for v in logits]
            probs[name] = [w / sum(weights) for w in weights]
        history.append({"epoch": epoch, "temperature": 5 * 0.6 ** epoch, "probs": probs})
    return {"schema": "adaptqnet/alphas/1", "layers": [n for n, _ in layers], "precisions": precisions,
            "history": history}


def log_rows(search_epochs=6, finetune_epochs=3):
    rows = []
    for e in range(search_epochs):
        rows.append({"epoch": str(e), "phase": "search", "temperature": f"{5 * 0.6 ** e}",
                     "train_loss": f"{2 - 0.1 * e}", "train_acc": f"{50 + 3 * e}", "val_loss": f"{2.1 - 0.1 * e}",
                     "val_acc": f"{48 + 3 * e}", "hw_loss": f"{0.5 - 0.02 * e}", "exp_latency_ms": f"{30 - e}",
                     "exp_peak_ram_kb": f"{300 - 5 * e}", "argmax_latency_ms": f"{29 - e}",
                     "argmax_peak_ram_kb": f"{290 - 5 * e}", "alpha_entropy": f"{1 - 0.1 * e}",
                     "lr_weights": f"{0.01 * 0.9 ** e}", "lr_alpha": "0.0003", "time_s": "12.5"})
    for e in range(finetune_epochs):
        rows.append({"epoch": str(e), "phase": "finetune", "temperature": "", "train_loss": f"{1 - 0.1 * e}",
                     "train_acc": f"{80 + e}", "val_loss": f"{1.1 - 0.1 * e}", "val_acc": f"{78 + e}", "hw_loss": "",
                     "exp_latency_ms": "", "exp_peak_ram_kb": "", "argmax_latency_ms": "",
                     "argmax_peak_ram_kb": "", "alpha_entropy": "", "lr_weights": "0.001", "lr_alpha": "",
                     "time_s": "8"})
    return rows


# ---------------------------------------------------------------------------------------------------
# π evolution
# ---------------------------------------------------------------------------------------------------
def test_alpha_evolution_for_a_whole_mobilenetv2(tmp_path):
    path = tmp_path / "plots" / "alpha_evolution.png"  # the folder does not exist yet
    assert viz.plot_alpha_evolution(alphas_history(mbv2_layers(), epochs=6), path) == str(path)
    image = read_png(path, min_width=1000, min_height=700)
    for precision in viz.PRECISION_COLORS:
        assert pixels_of(image, viz.PRECISION_COLORS[precision]) > 50, precision
    no_temp_files(path.parent)


def test_alpha_evolution_one_layer_one_epoch(tmp_path):
    history = alphas_history([("classifier.1", "linear")], epochs=1)
    history["layers"] = ["classifier.1"]
    history["precisions"] = {"classifier.1": ["int8", "int4"]}
    history["history"][0]["probs"] = {"classifier.1": [0.7, 0.3]}
    path = tmp_path / "alpha.png"
    image = read_png(viz.plot_alpha_evolution(history, path), min_width=150, min_height=150)
    assert pixels_of(image, viz.PRECISION_COLORS["int8"]) > 20
    assert pixels_of(image, viz.PRECISION_COLORS["int4"]) > 20
    assert pixels_of(image, viz.PRECISION_COLORS["int2"]) == 0


def test_alpha_evolution_layer_missing_from_some_epochs_leaves_a_gap(tmp_path):
    history = alphas_history(mbv2_layers()[:4], epochs=3)
    del history["history"][1]["probs"]["features.0.0"]
    read_png(viz.plot_alpha_evolution(history, tmp_path / "a.png"), min_width=200, min_height=100)


@pytest.mark.parametrize("change, message", [
    (lambda h: h.update(layers=[]), r"layers.*non-empty"),
    (lambda h: h.update(history=[]), r"history.*non-empty"),
    (lambda h: h.update(schema="adaptqnet/mapping/1"), r"schema"),
    (lambda h: h["precisions"].update({"features.0.0": ["int8", "int3"]}), r"unknown precision 'int3'"),
    (lambda h: h["history"][0]["probs"].update({"features.0.0": [1.0]}), r"epoch 0.*features\.0\.0.*probabilities"),
])
def test_alpha_evolution_rejects_bad_input(tmp_path, change, message):
    history = alphas_history(mbv2_layers()[:3], epochs=2)
    change(history)
    with pytest.raises(ValueError, match=message):
        viz.plot_alpha_evolution(history, tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


# ---------------------------------------------------------------------------------------------------
# Precision map
# ---------------------------------------------------------------------------------------------------
def precision_layers(seed=1):
    rng = random.Random(seed)
    return [{"name": name, "op": op, "precision": rng.choice(["int8", "int4", "int2", "fp16"]),
             "live_kb": rng.uniform(20, 300), "latency_ms": rng.uniform(0.1, 3), "macs": rng.randint(10 ** 5, 10 ** 7)}
            for name, op in mbv2_layers()]


def test_precision_map_realistic_with_budget_and_target(tmp_path):
    path = tmp_path / "precision_map.png"
    (tmp_path / "precision_map.png").write_bytes(b"old")
    viz.plot_precision_map(precision_layers(), path, memory_budget_kb=256, latency_target_ms=60,
                           title="digits · STM32H747")
    image = read_png(path, min_width=1000, min_height=700)  # replaced, not appended to
    assert pixels_of(image, viz.PRECISION_COLORS["int2"]) > 100
    no_temp_files(tmp_path)


def test_precision_map_one_layer_uses_the_fixed_colour(tmp_path):
    layer = {"name": "classifier.1", "op": "linear", "precision": "int4", "live_kb": 1.5, "latency_ms": 0.02,
             "macs": 12800}
    image = read_png(viz.plot_precision_map([layer], tmp_path / "one.png"))
    assert pixels_of(image, viz.PRECISION_COLORS["int4"]) > 500
    for other in ("fp32", "fp16", "int8", "int2"):
        assert pixels_of(image, viz.PRECISION_COLORS[other]) == 0, other


def test_precision_map_dual_core_split_and_missing_figures(tmp_path):
    layers = precision_layers()[:6]
    layers[2]["precision"] = {"units": {"m7": {"precision": "int8", "channels": [0, 48]},
                                        "m4": {"precision": "int4", "channels": [48, 96]}}}
    layers[3]["precision"] = {"m7": {"precision": "fp16", "channels": [0, 10]},
                              "m4": {"precision": "int2", "channels": [10, 12]}}
    layers[4].pop("live_kb")
    layers[5]["latency_ms"] = None
    for layer in layers:
        if layer["precision"] in ("int4", "fp16", "int2"):
            layer["precision"] = "int8"
    image = read_png(viz.plot_precision_map(layers, tmp_path / "dual.png", memory_budget_kb=100))
    for precision in ("int8", "int4", "fp16", "int2"):
        assert pixels_of(image, viz.PRECISION_COLORS[precision]) > 30, precision


def test_precision_segments_split_by_channel_share():
    assert viz.precision_segments("int8") == [(None, "int8", 1.0)]
    segments = viz.precision_segments({"units": {"m7": {"precision": "int8", "channels": [0, 48]},
                                                 "m4": {"precision": "int4", "channels": [48, 64]}}})
    assert segments == [("m7", "int8", 0.75), ("m4", "int4", 0.25)]


@pytest.mark.parametrize("layers, message", [
    ([], r"layers: expected a non-empty list"),
    ("features.0.0", r"layers: expected a non-empty list"),
    ([{"name": "a", "precision": "int5"}], r"layers\[0\] \(a\) precision: unknown precision 'int5'"),
    ([{"name": "a"}], r"missing 'precision'"),
    ([{"name": "a", "precision": {"units": {"m7": {"precision": "int8", "channels": [5]}}}}], r"channels"),
    ([{"precision": "int8"}], r"layers\[0\].*name"),
])
def test_precision_map_rejects_bad_input(tmp_path, layers, message):
    with pytest.raises(ValueError, match=message):
        viz.plot_precision_map(layers, tmp_path / "m.png")


# ---------------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------------
def test_training_curves_from_log_csv_with_search_and_finetune(tmp_path):
    import csv
    rows = log_rows()
    log = tmp_path / "log.csv"
    with open(log, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    read_back = viz.read_log_csv(log)
    assert len(read_back) == len(rows)
    image = read_png(viz.plot_training_curves(read_back, tmp_path / "curves.png"), min_width=1000,
                     min_height=1000)
    assert pixels_of(image, SECONDARY_COLOR) > 100  # the val / argmax curves


def test_training_curves_with_missing_columns_and_numbers(tmp_path):
    rows = [{"epoch": e, "val_acc": 40.0 + e, "train_loss": 2.0 - 0.2 * e} for e in range(3)]
    read_png(viz.plot_training_curves(rows, tmp_path / "few.png"))
    single = [{"epoch": 0, "phase": "search", "val_acc": "55.0", "temperature": "nan"}]
    read_png(viz.plot_training_curves(single, tmp_path / "single.png"))


def test_finetune_epochs_follow_the_search_epochs():
    phases, placed = _phase_positions(log_rows(search_epochs=4, finetune_epochs=2))
    assert phases == ["search", "finetune"]
    assert [(p, x) for p, x, _ in placed] == [("search", 0), ("search", 1), ("search", 2), ("search", 3),
                                             ("finetune", 4), ("finetune", 5)]
    # a resumed run that logged epoch 1 twice keeps one point per epoch: the last
    rows = log_rows(search_epochs=3, finetune_epochs=0)
    rows.insert(2, dict(rows[1], val_acc="99"))
    _, placed = _phase_positions(rows)
    assert [x for _, x, _ in placed] == [0, 1, 2]
    assert placed[1][2]["val_acc"] == rows[2]["val_acc"]


def test_training_curves_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="log_rows: expected a non-empty list"):
        viz.plot_training_curves([], tmp_path / "c.png")
    with pytest.raises(ValueError, match="no plottable values"):
        viz.plot_training_curves([{"epoch": "0", "phase": "finetune", "val_acc": ""}], tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"log_rows\[1\]: expected a dict"):
        viz.plot_training_curves([{"epoch": 0, "val_acc": 1}, "0,search"], tmp_path / "c.png")


# ---------------------------------------------------------------------------------------------------
# Pareto
# ---------------------------------------------------------------------------------------------------
def pareto_points():
    points = [{"label": f"λ={lam}", "latency_ms": latency, "accuracy": acc, "kind": "search"}
              for lam, latency, acc in ((0, 40.0, 91.0), (0.1, 30.0, 90.5), (0.5, 26.0, 88.0), (1, 27.0, 87.0))]
    points += [{"label": f"uniform {p}", "latency_ms": latency, "accuracy": acc, "kind": "uniform"}
               for p, latency, acc in (("fp32", 80.0, 91.5), ("int8", 25.0, 89.0), ("int4", 30.0, 86.0))]
    points.append({"label": "dual-core λ=0.5", "latency_ms": 15.0, "accuracy": 88.5, "kind": "stage2"})
    return points


def test_pareto_front_keeps_only_undominated_points():
    front = viz.pareto_front(pareto_points())
    assert [p["label"] for p in front] == ["dual-core λ=0.5", "uniform int8", "λ=0.1", "λ=0", "uniform fp32"]
    # equal latency: only the more accurate point survives
    twins = [{"label": "a", "latency_ms": 1, "accuracy": 0.5}, {"label": "b", "latency_ms": 1, "accuracy": 0.6}]
    assert [p["label"] for p in viz.pareto_front(twins)] == ["b"]


def test_pareto_plot(tmp_path):
    image = read_png(viz.plot_pareto(pareto_points(), tmp_path / "pareto.png", title="λ sweep"))
    assert pixels_of(image, viz.PRECISION_COLORS["int8"]) > 20  # uniform references carry their colour
    assert pixels_of(image, SECONDARY_COLOR) > 20  # the stage-2 marker
    read_png(viz.plot_pareto([{"label": "only", "latency_ms": 3.0, "accuracy": 0.9}], tmp_path / "one.png"))


def test_pareto_labels_of_clustered_points_do_not_overlap():
    # a λ sweep on a Cortex-M profile: several networks within 0.1 ms and 0.5 points of each other
    points = [{"label": label, "kind": "search", "latency_ms": 60.16 + 0.03 * i, "accuracy": 98.15 + 0.1 * (i % 2)}
              for i, label in enumerate(["all-int8", "λ=0.1", "λ=0.3", "λ=1", "λ=5"])]
    points.append({"label": "all-fp32 (pretrained)", "kind": "uniform", "latency_ms": 85.47, "accuracy": 98.61})
    fig = new_figure(7.5, 5.2)
    ax = fig.subplots()
    ax.scatter([p["latency_ms"] for p in points], [p["accuracy"] for p in points])
    _place_labels(fig, ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert sorted(t.get_text() for t in ax.texts) == sorted(p["label"] for p in points)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), "two labels overlap"


@pytest.mark.parametrize("points, message", [
    ([], "points: expected a non-empty list"),
    ([{"label": "x", "latency_ms": 1, "accuracy": 2, "kind": "lottery"}], r"unknown kind 'lottery'"),
    ([{"label": "x", "latency_ms": None, "accuracy": 2}], r"points\[0\] \(x\) latency_ms"),
    ([{"label": "x", "latency_ms": 1, "accuracy": "n/a"}], r"points\[0\] \(x\) accuracy"),
])
def test_pareto_rejects_bad_input(tmp_path, points, message):
    with pytest.raises(ValueError, match=message):
        viz.plot_pareto(points, tmp_path / "p.png")


# ---------------------------------------------------------------------------------------------------
# Dual-core timeline
# ---------------------------------------------------------------------------------------------------
def timeline(count=20, seed=2):
    rng = random.Random(seed)
    layers, now = [], 0.0
    for i, (name, _) in enumerate(mbv2_layers()[:count]):
        units = {"m7": {"busy_ms": rng.uniform(0.1, 1.5), "precision": "int8"}}
        if i % 3:
            units["m4"] = {"busy_ms": rng.uniform(0.05, 1.5), "precision": "int4"}
        end = now + max(u["busy_ms"] for u in units.values()) + 0.02
        layers.append({"name": name, "start_ms": now, "units": units, "end_ms": end})
        now = end
    return layers


def test_dual_core_timeline(tmp_path):
    image = read_png(viz.plot_dual_core_timeline(timeline(), ["m7", "m4"], tmp_path / "timeline.png"))
    assert pixels_of(image, viz.PRECISION_COLORS["int8"]) > 500
    assert pixels_of(image, viz.PRECISION_COLORS["int4"]) > 200
    assert pixels_of(image, IDLE_COLOR) > 200  # m4's idle gaps are visible


def test_dual_core_timeline_one_layer_without_end(tmp_path):
    layer = {"name": "features.0.0", "start_ms": 0.0, "units": {"m4": {"busy_ms": 0.4, "precision": "fp32"}}}
    image = read_png(viz.plot_dual_core_timeline([layer], ["m7", "m4"], tmp_path / "t.png"))
    assert pixels_of(image, viz.PRECISION_COLORS["fp32"]) > 500


@pytest.mark.parametrize("change, units, message", [
    (lambda ls: ls.clear(), ["m7", "m4"], "layers: expected a non-empty list"),
    (lambda ls: None, [], "unit_names: expected a non-empty list"),
    (lambda ls: ls[0]["units"].update(m0={"busy_ms": 1, "precision": "int8"}), ["m7", "m4"], "unknown unit 'm0'"),
    (lambda ls: ls[1].update(end_ms=ls[1]["start_ms"]), ["m7", "m4"], r"layers\[1\].*end_ms .* before"),
    (lambda ls: ls[0]["units"]["m7"].update(busy_ms=-1), ["m7", "m4"], r"busy_ms: expected a number >= 0"),
])
def test_dual_core_timeline_rejects_bad_input(tmp_path, change, units, message):
    layers = timeline(count=3)
    change(layers)
    with pytest.raises(ValueError, match=message):
        viz.plot_dual_core_timeline(layers, units, tmp_path / "t.png")


# ---------------------------------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------------------------------
def test_plot_run_dir_draws_what_the_files_allow(tmp_path):
    import csv
    import json
    rows = log_rows(search_epochs=3, finetune_epochs=1)
    with open(tmp_path / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert viz.plot_run_dir(tmp_path) == [str(tmp_path / "training_curves.png")]
    (tmp_path / "alphas.json").write_text(json.dumps(alphas_history(mbv2_layers()[:5], epochs=3)))
    written = viz.plot_run_dir(tmp_path)
    assert written == [str(tmp_path / "training_curves.png"), str(tmp_path / "alpha_evolution.png")]
    for path in written:
        read_png(path, min_width=200, min_height=150)
    with pytest.raises(FileNotFoundError):
        viz.plot_run_dir(tmp_path / "missing")


def test_precision_colour_is_fixed_and_checked():
    assert viz.precision_color("int8") == viz.PRECISION_COLORS["int8"]
    assert len(set(viz.PRECISION_COLORS.values())) == 5
    with pytest.raises(ValueError, match="unknown precision 'int3'"):
        viz.precision_color("int3")
