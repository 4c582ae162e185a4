"""Tests for quantrewrite.patterns: the one matching rule for layers, disable and disable_quantizers."""

from __future__ import annotations

import pickle

import pytest

from quantrewrite.patterns import PatternError, compile_pattern, enclosing_names, first_match, pattern_matches

QUANTIZER = "layer1.0.conv1._input_quantizer"

# (pattern, name, expected); the id says why.
MATCH_TABLE = [
    ("layer1", "layer1", True, "glob-exact-name"),
    ("layer1", QUANTIZER, True, "glob-enclosing-module"),
    ("layer1.0", QUANTIZER, True, "glob-enclosing-dotted-prefix"),
    ("layer1.0.conv1", QUANTIZER, True, "glob-owner-of-quantizer"),
    ("layer1", "layer10.conv", False, "glob-no-partial-component"),
    ("layer", "layer1", False, "glob-is-not-a-prefix-match"),
    ("0", QUANTIZER, False, "glob-inner-component-alone-no-match"),
    ("conv1", QUANTIZER, False, "glob-anchored-at-root"),
    ("*", "layer1.0.conv1", True, "star-crosses-dots"),
    ("*.conv1", QUANTIZER, True, "star-prefix-crosses-dots"),
    ("layer*", "layer4.1.bn", True, "star-suffix"),
    ("*.downsample.*", "layer1.0.downsample.0._input_quantizer", True, "downsample-quantizer"),
    ("*.downsample.*", "layer1.0.downsample.0", True, "downsample-child"),
    ("*.downsample.*", "layer1.0.downsample", False, "downsample-needs-something-after"),
    ("*._weight_quantizer", "fc._weight_quantizer", True, "quantizer-suffix"),
    ("*._weight_quantizer", "fc._input_quantizer", False, "other-quantizer-suffix"),
    ("fc", "fc._weight_quantizer", True, "owner-reaches-both-quantizers"),
    ("layer?", "layer4.0", True, "question-mark-one-char"),
    ("layer[12]", "layer2.0", True, "char-class"),
    ("layer[12]", "layer3.0", False, "char-class-miss"),
    ("Layer1", "layer1", False, "glob-case-sensitive"),
    ("re:layer\\d+", "layer10.conv", True, "regex-enclosing-module"),
    ("re:layer\\d", "layer10", False, "regex-is-fullmatch"),
    ("re:^classifier\\.\\d+$", "classifier.1", True, "regex-anchors-allowed"),
    ("re:^classifier\\.\\d+$", "classifier.1._input_quantizer", True, "regex-enclosing-of-quantizer"),
    ("re:^classifier\\.\\d+$", "classifier.head", False, "regex-miss"),
    ("re:.*conv.*", "layer1.0.conv2", True, "regex-dotstar"),
    ("re:conv", "layer1.0.conv2", False, "regex-not-search"),
    ("*", "", True, "root-matched-by-star"),
    ("re:.*", "", True, "root-matched-by-regex-dotstar"),
    ("layer1", "", False, "root-not-matched-by-name"),
    ("re:.+", "", False, "root-not-matched-by-nonempty-regex"),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), [row[:3] for row in MATCH_TABLE],
                         ids=[row[3] for row in MATCH_TABLE])
def test_pattern_matches(pattern: str, name: str, expected: bool) -> None:
    assert pattern_matches(pattern, name) is expected


def test_enclosing_names_innermost_first() -> None:
    assert enclosing_names(QUANTIZER) == (QUANTIZER, "layer1.0.conv1", "layer1.0", "layer1")
    assert enclosing_names("fc") == ("fc",)
    assert enclosing_names("") == ("",)


@pytest.mark.parametrize(("pattern", "fragment"), [
    ("re:(", "bad regular expression"),
    ("re:[a-", "bad regular expression"),
    ("", "empty pattern"),
    ("re:", "empty regular expression"),
    (3, "expected a glob or 're:' regex string"),
    (None, "expected a glob or 're:' regex string"),
], ids=["unclosed-group", "unclosed-class", "empty-glob", "empty-regex", "int", "none"])
def test_bad_patterns_name_the_pattern(pattern: object, fragment: str) -> None:
    with pytest.raises(PatternError) as info:
        compile_pattern(pattern)  # type: ignore[arg-type]
    assert fragment in str(info.value)
    assert repr(pattern) in str(info.value)
    assert info.value.pattern == pattern
    with pytest.raises(PatternError):
        pattern_matches(pattern, "x")  # type: ignore[arg-type]


def test_pattern_error_is_value_error_and_pickles() -> None:
    with pytest.raises(ValueError) as info:
        compile_pattern("re:(")
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.pattern == "re:("


def test_name_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="name must be a string"):
        pattern_matches("*", None)  # type: ignore[arg-type]


def test_compiled_patterns_are_cached() -> None:
    assert compile_pattern("layer*") is compile_pattern("layer*")
    assert compile_pattern("re:a+") is compile_pattern("re:a+")


def test_first_match_returns_the_first_matching_index() -> None:
    patterns = ["*.downsample.*", "fc", "re:fc.*"]
    assert first_match(patterns, "fc._input_quantizer") == 1
    assert first_match(patterns, "layer1.0.downsample.0._input_quantizer") == 0
    assert first_match(patterns, "conv1._input_quantizer") is None
    assert first_match([], "fc") is None


def test_many_calls_are_fast() -> None:
    names = [f"layer{i}.{j}.conv{k}._input_quantizer" for i in range(4) for j in range(20) for k in range(3)]
    for _ in range(50):
        hits = sum(pattern_matches("re:layer[23]\\..*", n) for n in names)
    assert hits == 120
