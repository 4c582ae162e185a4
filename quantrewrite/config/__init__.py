"""Quantization configs: YAML, a dict or a preset name -> a validated ``QuantConfig``, and its ``resolve``.

The format (version 1; the presets in ``quantrewrite/configs/`` are commented examples to copy)::

    version: 1
    base: int8_default                                # optional: inherit a preset or a file, then override
    defaults: {input: {num_bits: 8, calib_method: histogram}, weight: {num_bits: 8, axis: 0}}
    modules:   {MaxPool2d: {quantize: false}}         # registered float class name -> quantize/input/weight
    functions: {add: {quantize: true}}                # registered op name -> quantize/input/weight
    layers:                                           # ordered rules; every match merges, later wins
      - {match: "layer4", weight: {num_bits: 4}}      # glob or "re:" regex, see quantrewrite.patterns
    disable: ["*.downsample.*"]                       # quantizers created but disabled

How ``base`` merges: ``quantrewrite.config.inherit``. A config without ``base`` starts from the Quant classes'
own defaults only (max calibration everywhere), not from a preset.

Everything is validated before anything is touched. All problems are reported at once in one
``QuantConfigError`` whose lines give the YAML path, the bad value, what was expected, a did-you-mean and,
for YAML text, the file and line.

Example:
    >>> from quantrewrite.descriptor import QuantDescriptor
    >>> cfg = load_config({"version": 1, "layers": [{"match": "fc", "weight": {"num_bits": 4}}]},
    ...                   known_modules=[], known_functions=[])
    >>> cfg.resolve("fc", "module", "Linear", QuantDescriptor(), QuantDescriptor(axis=0)).weight.num_bits
    4
"""

from __future__ import annotations

from quantrewrite.config.presets import DEFAULT_PRESET, available_presets, load_config
from quantrewrite.config.quant_config import QuantConfig, Resolution
from quantrewrite.config.schema import VERSION, QuantConfigError

__all__ = ["DEFAULT_PRESET", "VERSION", "QuantConfig", "QuantConfigError", "Resolution", "available_presets",
           "load_config"]
