"""``base:``: inherit a preset or a file, then override (issue 8 item 5): the merge of every section, the list
rule, located errors, cycles, a mistyped base, and the chain in the plan, the recipe and the CLI."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from quantrewrite import calibrate, plan, quantize_model
from quantrewrite.config import QuantConfig, QuantConfigError, load_config
from quantrewrite.config.inherit import LIST_SECTIONS, MERGE_RULES
from quantrewrite.config.schema import TOP_KEYS
from quantrewrite.descriptor import QuantDescriptor
from quantrewrite.recipe import save_recipe

MODULES = ("Conv2d", "Linear", "MaxPool2d")
FUNCTIONS = ("add", "cat")
KNOWN = {"known_modules": MODULES, "known_functions": FUNCTIONS}
IN = QuantDescriptor(num_bits=8)  # class defaults, as a Quant class passes them
W = QuantDescriptor(num_bits=8, axis=0)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(path: Path) -> QuantConfig:
    return QuantConfig.from_file(path, **KNOWN)


def errors_of(path: Path) -> list[tuple[str, str]]:
    with pytest.raises(QuantConfigError) as info:
        load(path)
    return info.value.errors


BASE = """\
    version: 1
    defaults:
      input:  {num_bits: 8, calib_method: histogram}
      weight: {num_bits: 8, axis: 0}
    modules:
      Linear: {weight: {num_bits: 6, unsigned: false}}
    layers:
      - match: "head"
        weight: {num_bits: 4}
    disable: ["a.*"]
    share:
      - ["x._input_quantizer", "y._input_quantizer"]
    placement: tensorrt
"""


# ------------------------------------------------------------------------------------------------ the merge
def test_a_small_config_keeps_the_presets_calibration(tmp_path):  # the report
    child = load(write(tmp_path, "add.yaml", "version: 1\nbase: int8_default\nfunctions: {add: {quantize: true}}\n"))
    preset = load_config("int8_default", **KNOWN)
    conv = child.resolve("conv", "module", "Conv2d", IN, W)
    assert conv == preset.resolve("conv", "module", "Conv2d", IN, W)
    assert conv.input.calib_method == "histogram"
    assert child.resolve("add", "function", "add", IN, None, default_quantize=False).quantize


def test_without_base_a_config_starts_from_the_class_defaults(tmp_path):
    alone = load(write(tmp_path, "add.yaml", "version: 1\nfunctions: {add: {quantize: true}}\n"))
    assert alone.resolve("conv", "module", "Conv2d", IN, W).input == IN  # max calibration: the class default
    assert alone.chain == (str(tmp_path / "add.yaml"),)


def test_defaults_and_entries_merge_field_by_field(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = load(write(tmp_path, "child.yaml", """\
        version: 1
        base: base.yaml
        defaults:
          weight: {num_bits: 4}
        modules:
          Linear: {weight: {unsigned: true}}
          MaxPool2d: {quantize: false}
    """))
    data = child.to_dict()
    assert data["defaults"] == {"input": {"num_bits": 8, "calib_method": "histogram"},
                                "weight": {"num_bits": 4, "axis": [0]}}
    assert data["modules"] == {"Linear": {"weight": {"num_bits": 6, "unsigned": True}},
                               "MaxPool2d": {"quantize": False}}
    conv = child.resolve("conv", "module", "Conv2d", IN, W)
    assert (conv.input.calib_method, conv.weight.num_bits, conv.weight.axis) == ("histogram", 4, (0,))
    assert child.resolve("fc", "module", "Linear", IN, W).weight.num_bits == 6  # the base's entry beats defaults


def test_lists_are_the_bases_items_then_the_childs(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = load(write(tmp_path, "child.yaml", """\
        version: 1
        base: base.yaml
        layers:
          - match: "head"
            weight: {num_bits: 8}
        disable: ["b.*"]
        share:
          - ["p._input_quantizer", "q._input_quantizer"]
    """))
    head = child.resolve("head", "module", "Conv2d", IN, W)
    assert head.weight.num_bits == 8  # the child's rule comes later: it wins
    assert head.rules == ("defaults", "base.layers[0]", "layers[0]")
    assert child.disable == ("a.*", "b.*")
    assert child.disabled_by("a.x") == "base.disable[0] 'a.*'" and child.disabled_by("b.x") == "disable[0] 'b.*'"
    assert child.share == (("x._input_quantizer", "y._input_quantizer"), ("p._input_quantizer", "q._input_quantizer"))
    assert child.placement.target == "tensorrt"  # inherited


def test_placement_is_replaced_as_a_whole(tmp_path):
    write(tmp_path, "base.yaml", "version: 1\nplacement: {target: tensorrt, exempt: {small_gemm: ['fc']}}\n")
    child = load(write(tmp_path, "child.yaml", "version: 1\nbase: base.yaml\nplacement: dla\n"))
    assert child.placement.target == "dla" and dict(child.placement.exempt) == {}


def test_every_top_level_section_has_a_merge_rule():
    assert set(MERGE_RULES) == set(TOP_KEYS) - {"base"}
    assert set(LIST_SECTIONS) <= set(MERGE_RULES)


def test_a_preset_as_base_and_a_chain_of_three(tmp_path):
    write(tmp_path, "a.yaml", "version: 1\nbase: w4a8\nlayers:\n  - {match: 'x', quantize: false}\n")
    write(tmp_path, "sub/b.yaml", "version: 1\nbase: ../a.yaml\nlayers:\n  - {match: 'y', quantize: false}\n")
    c = load(write(tmp_path, "c.yaml", "version: 1\nbase: sub/b.yaml\nlayers:\n  - {match: 'z', quantize: false}\n"))
    a, b = str(tmp_path / "a.yaml"), str(tmp_path / "sub" / "b.yaml")
    assert c.chain == ("preset w4a8", a, b, str(tmp_path / "c.yaml"))
    assert c.source == f"{tmp_path / 'c.yaml'} (based on {b}, {a}, preset w4a8)"
    assert [c.resolve(n, "module", "Conv2d", IN, W).reason for n in "xyz"] == [
        "base.base.layers[0] says quantize: false", "base.layers[0] says quantize: false",
        "layers[0] says quantize: false"]
    assert c.resolve("w", "module", "Conv2d", IN, W).weight.num_bits == 4  # from the preset


def test_a_relative_base_resolves_against_the_including_file(tmp_path, monkeypatch):
    write(tmp_path, "configs/base.yaml", "version: 1\ndefaults: {weight: {num_bits: 5}}\n")
    write(tmp_path, "base.yaml", "version: 1\ndefaults: {weight: {num_bits: 7}}\n")  # the cwd's: not this one
    child = write(tmp_path, "configs/child.yaml", "version: 1\nbase: base.yaml\n")
    monkeypatch.chdir(tmp_path)
    assert load(Path("configs/child.yaml")).resolve("c", "module", "Conv2d", IN, W).weight.num_bits == 5
    assert load(child).resolve("c", "module", "Conv2d", IN, W).weight.num_bits == 5


# ------------------------------------------------------------------------------------------------- errors
def test_an_error_in_the_base_names_its_file_line_and_who_named_it(tmp_path):
    write(tmp_path, "base.yaml", "version: 1\ndefaults:\n  input: {num_bits: eight}\n")
    child = write(tmp_path, "child.yaml", "version: 1\n\nbase: base.yaml\n")
    [(path, message)] = errors_of(child)
    assert path == "defaults.input.num_bits"
    assert message.endswith(f"got 'eight' ({tmp_path / 'base.yaml'}:3) (the base named at {child}:3)")


def test_an_error_in_the_child_is_located_in_the_child_and_inherited_rules_in_the_base(tmp_path):
    write(tmp_path, "base.yaml", "version: 1\nlayers:\n  - match: 'fc'\n    weight: {axis: 0}\n")
    child = write(tmp_path, "child.yaml", "version: 1\nbase: base.yaml\nlayers:\n  - match: 'fc'\n"
                                          "    weight: {num_bits: eight}\n")
    [(path, message)] = errors_of(child)
    assert path == "layers[0].weight.num_bits" and message.endswith(f"({child}:5)")
    config = load(write(tmp_path, "ok.yaml", "version: 1\nbase: base.yaml\ndisable: ['nothing']\n"))
    assert config.origin(("defaults", "base.layers[0]"), "weight", "axis") == (
        "base.layers[0].weight.axis", f" ({tmp_path / 'base.yaml'}:4)")
    with pytest.warns(UserWarning) as caught:
        config.check_unmatched(["conv"], ["conv._input_quantizer"])
    assert sorted(str(w.message) for w in caught) == [
        f"base.layers[0].match: 'fc' matches no module or op site ({tmp_path / 'base.yaml'}:3)",
        f"disable[0]: 'nothing' matches no quantizer ({tmp_path / 'ok.yaml'}:3)"]


@pytest.mark.parametrize("ref, fragment", [
    ("int8_defalt", "base: unknown preset 'int8_defalt' (did you mean 'int8_default'?)"),
    ("int8_default.yaml", ("base: config file not found: {d}/int8_default.yaml; the preset is named "
                           "'int8_default' (without .yaml)")),
    ("nope/base.yaml", "base: config file not found: {d}/nope/base.yaml"),
    ("[1, 2]", "base: expected a preset name"),
])
def test_a_bad_base_says_what_it_expected(tmp_path, ref, fragment):
    child = write(tmp_path, "child.yaml", f"version: 1\nbase: {ref}\n")
    [(path, message)] = errors_of(child)
    assert fragment.format(d=tmp_path) in f"{path}: {message}"
    assert f"{child}:2" in message


def test_a_cycle_of_bases_is_an_error_naming_the_cycle(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write(tmp_path, "a.yaml", "version: 1\nbase: b.yaml\n")
    write(tmp_path, "b.yaml", "version: 1\nbase: a.yaml\n")
    [(path, message)] = errors_of(a)
    assert path == "base"
    assert f"'a.yaml' makes a cycle of bases: {a} -> {b} -> {a} ({b}:2)" in message
    write(tmp_path, "self.yaml", "version: 1\nbase: ./self.yaml\n")
    assert "makes a cycle of bases" in errors_of(tmp_path / "self.yaml")[0][1]


def test_base_in_plain_data_resolves_presets_and_the_cwd(tmp_path, monkeypatch):
    write(tmp_path, "b.yaml", "version: 1\ndefaults: {weight: {num_bits: 5}}\n")
    monkeypatch.chdir(tmp_path)
    config = QuantConfig({"version": 1, "base": "b.yaml"}, **KNOWN)
    assert config.chain == ("b.yaml", "<dict>") and config.resolve("c", "module", "Conv2d", IN, W).weight.num_bits == 5
    assert QuantConfig({"version": 1, "base": "int8_max"}, **KNOWN).source == "<dict> (based on preset int8_max)"


# ---------------------------------------------------------------------------------- the plan, recipe and CLI
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))


def test_the_plan_and_the_recipe_record_the_chain(tmp_path):
    path = write(tmp_path, "child.yaml", "version: 1\nbase: int8_max\nlayers:\n  - {match: '3', quantize: false}\n")
    assert plan(tiny(), str(path)).config_chain == ["preset int8_max", str(path)]
    qmodel = quantize_model(tiny(), str(path))
    calibrate(qmodel, [torch.randn(2, 3, 8, 8)], progress=False)
    recipe = yaml.safe_load(save_recipe(qmodel, tmp_path / "r.yaml").read_text())
    assert recipe["config_chain"] == ["preset int8_max", str(path)]
    assert recipe["config_source"] == f"{path} (based on preset int8_max)"
    assert "base" not in recipe["config"] and recipe["config"]["layers"] == [{"match": "3", "quantize": False}]


FACTORY = "import torch\nfrom torch import nn\n\n\ndef build():\n    torch.manual_seed(0)\n    return nn.Sequential(" \
          "nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))\n"


@pytest.mark.parametrize("preset, method, expected", [
    ("int8_max", "entropy", ("4 max calibrators (--method entropy picks amax for histogram calibrators only: "
                             "this config has none)")),
    ("int8_default", "entropy", "2 max calibrators, 2 histogram calibrators (method entropy)"),
    ("int8_default", "max", "2 max calibrators, 2 histogram calibrators (method max)"),
    ("int8_default", "auto", "2 max calibrators, 2 histogram calibrators (method auto: kept "),
])
def test_the_cli_prints_the_chain_and_the_calibrators_used(tmp_path, capsys, preset, method, expected):
    from quantrewrite.cli import main

    write(tmp_path, "factory.py", FACTORY)
    config = write(tmp_path, "child.yaml", f"version: 1\nbase: {preset}\nfunctions: {{add: {{quantize: true}}}}\n")
    code = main(["quantize", f"{tmp_path}/factory.py:build", "-c", str(config), "--calib", "random:2x3x8x8",
                 "--num-batches", "2", "--method", method, "--recipe", str(tmp_path / "r.yaml")])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert f"(4 quantizers, config: {config} (based on preset {preset}))" in lines[0]
    assert lines[1].startswith("calibrated 4 quantizers on 2 batches in ")
    assert lines[1].endswith(f"s: {expected}") if method != "auto" else f"s: {expected}" in lines[1]
    assert "histogram method" not in out
