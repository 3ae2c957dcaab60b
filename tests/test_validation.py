"""Every number read from a file or a flag is checked where it is read, with the file and the field named:
latency tables (tensor_analysis/lut.py), analysis files (analysis_file.py), hardware profiles, mappings,
the input size a run's memory allows (Search_CIFAR10/training/data.py)."""
import copy
import json
import math
import re

import pytest

from data.datasets import DatasetError, load_image_folder_raw
from Search_CIFAR10.training.data import check_batch_fits, device_memory_bytes
from tensor_analysis.analysis_file import analysis_document, validate_analysis
from tensor_analysis.graph import analyze_network
from tensor_analysis.lut import build_lut, validate_lut
from tensor_analysis.profiles import load_profile

SPEC = {"type": "mobilenetv2", "width_mult": 0.1, "input_size": 16, "num_classes": 10}


@pytest.fixture(scope="module")
def net():
    return analyze_network(SPEC)


@pytest.fixture(scope="module")
def lut(net):
    return build_lut(net, "stm32h747", dual=True, splits=["0.5"])


@pytest.fixture(scope="module")
def analysis(net):
    return analysis_document(net, 1024)


def edited(doc, edit):
    doc = copy.deepcopy(doc)
    edit(doc)
    return doc


def first(mapping):
    return next(iter(mapping))


@pytest.mark.parametrize("value", [-5.0, math.nan, math.inf, "12", None, True])
def test_every_latency_in_a_table_is_a_finite_non_negative_number(lut, value):
    layer = first(lut["layers"])
    option = first(lut["dual"]["options"][layer])
    unit = first(lut["dual"]["options"][layer][option]["units_ms"])
    cases = [
        (lambda d: d["layers"][layer].update(int8=value), rf"lut.json: layer {layer}: int8: expected a non-negative"),
        (lambda d: d.update(fixed_ms=value), r"lut.json: fixed_ms: expected a non-negative"),
        (lambda d: d["dual"]["options"][layer][option].update(ms=value),
         rf"lut.json: dual.options.{layer}.{option.replace('[', '.').replace(']', '.')}.ms: expected a non-negative"),
        (lambda d: d["dual"]["options"][layer][option]["units_ms"].update({unit: value}),
         rf"units_ms.{unit}: expected a non-negative"),
    ]
    for edit, message in cases:
        with pytest.raises(ValueError, match=message):
            validate_lut(edited(lut, edit), "lut.json")
    validate_lut(lut, "lut.json")


def test_a_table_of_zeros_is_refused(lut):
    def zeros(d):
        for row in d["layers"].values():
            for p in row:
                row[p] = 0
    with pytest.raises(ValueError, match="lut.json: every latency in 'layers' is 0 ms"):
        validate_lut(edited(lut, zeros), "lut.json")


@pytest.mark.parametrize("field, value, message", [
    ("live", -5, r"bytes.int8.live: expected a non-negative whole number, got -5"),
    ("live", 1.5, r"bytes.int8.live: expected a non-negative whole number, got 1.5"),
    ("live", math.nan, r"bytes.int8.live: expected a non-negative whole number, got nan"),
    ("input", "many", r"bytes.int8.input: expected a non-negative whole number, got 'many'"),
])
def test_every_byte_count_in_an_analysis_is_a_non_negative_whole_number(analysis, field, value, message):
    name = analysis["layers"][0]["name"]
    doc = edited(analysis, lambda d: d["layers"][0]["bytes"]["int8"].update({field: value}))
    with pytest.raises(ValueError, match=rf"a.json: layer {name}: {message}"):
        validate_analysis(doc, "a.json")


def test_shapes_counts_and_the_threshold_of_an_analysis(analysis):
    validate_analysis(analysis, "a.json")
    name = analysis["layers"][0]["name"]
    cases = [
        (lambda d: d["layers"][0].update(out_shape=[8, 0, 8]), rf"layer {name}: out_shape: expected a shape of positive"),
        (lambda d: d["layers"][0].update(macs=-1), rf"layer {name}: macs: expected a non-negative whole number"),
        (lambda d: d["operators"][1].update(in_shape=[3, -16, 16]), r"operators\[1\] .*in_shape: expected a shape"),
        (lambda d: d["tensors"][0].update(shape=[3, 16.5, 16]), r"tensors\[0\] .*shape: expected a shape"),
        (lambda d: d.update(memory_threshold_kb=math.inf), r"memory_threshold_kb: expected a non-negative number"),
    ]
    for edit, message in cases:
        with pytest.raises(ValueError, match=message):
            validate_analysis(edited(analysis, edit), "a.json")


def test_dual_options_of_an_analysis_are_checked_too(net):
    from tensor_analysis.dual import dual_analysis_json
    dual = dual_analysis_json(net, load_profile("stm32h747"), 1024, splits=["0.5"])
    validate_analysis(dual, "d.json")
    layer = dual["layers"][0]
    key = first(layer["dual_options"])
    for field, value in (("live", -1), ("ms", math.nan)):
        doc = edited(dual, lambda d: d["layers"][0]["dual_options"][key].update({field: value}))
        with pytest.raises(ValueError, match=re.escape(f"d.json: layer {layer['name']}: dual_options.{key}.{field}: "
                                                       f"expected a non-negative")):
            validate_analysis(doc, "d.json")


@pytest.mark.parametrize("edit, message", [
    (lambda d: next(iter(d["units"].values())).update(overhead_cycles=-3000), "overhead_cycles: expected a non-neg"),
    (lambda d: next(iter(d["units"].values())).update(clock_mhz=0), "clock_mhz: expected a positive number"),
])
def test_hardware_profile_numbers(tmp_path, edit, message):
    with open(load_profile("stm32h747").path) as f:
        text = f.read()
    doc = json.loads(text)
    edit(doc)
    (tmp_path / "board.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"board.json: .*{message}"):
        load_profile(str(tmp_path / "board.json"))
    (tmp_path / "twice.json").write_text(text.replace('"ram_kb":', '"ram_kb": 1, "ram_kb":', 1))
    with pytest.raises(ValueError, match="twice.json: the key 'ram_kb' appears twice"):
        load_profile(str(tmp_path / "twice.json"))


def test_an_empty_class_folder_is_named(tmp_path):
    from PIL import Image
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.new("RGB", (10, 10), (i * 50, 0, 0)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "zebra").mkdir()
    with pytest.raises(DatasetError, match=rf"^{tmp_path}/zebra: class folder\(s\) with no images"):
        load_image_folder_raw(str(tmp_path), 8)


def test_an_image_folder_that_cannot_be_decoded_at_the_input_size_is_refused_with_both_figures(tmp_path):
    from PIL import Image
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (10, 10)).save(tmp_path / cls / f"{i}.png")
    with pytest.raises(DatasetError, match=r"^--input_size 3000000: 6 images decoded at 3000000x3000000 px take "
                                           r"\d+\.\d GB, more than the \d+\.\d GB of memory here"):
        load_image_folder_raw(str(tmp_path), 3_000_000)


def test_an_input_size_whose_batches_cannot_fit_is_refused_with_both_figures():
    have = device_memory_bytes("cpu")
    with pytest.raises(ValueError, match=r"^--input_size 100000: one evaluation batch of 64 images at 100000x100000 "
                                         r"px takes 7\.0 TB as float32, more than the .* GB of memory on cpu"):
        check_batch_fits(100000, 32, "cpu")
    check_batch_fits(224, 256, "cpu")
    assert have > 2 ** 30  # the machine's memory in bytes, not pages
