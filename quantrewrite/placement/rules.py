"""The placement rules, as data: one row per rule with the rule sets it belongs to and its reason.

The logic that applies them is in ``quantrewrite.placement.apply``; every decision it makes names the rule
(``PlanEntry.placement``, skip reasons, disable reasons). The facts behind the TensorRT rules come from
TensorRT's Q/DQ placement recommendations and the placement heuristics of NVIDIA ModelOpt's ONNX path.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CANDIDATES", "MAX_INT8_SEQ_LEN", "MIN_GEMM_DIM", "PAD_MODULES", "RULES", "TARGETS", "PlacementRule",
           "is_candidate", "rule"]

TARGETS = ("tensorrt", "dla")

MIN_GEMM_DIM = 16  # K or N below this: int8 tensor-core kernels lose to FP16 ones
MAX_INT8_SEQ_LEN = 512  # attention matmuls above this sequence length stay float


@dataclass(frozen=True)
class PlacementRule:
    """One placement rule.

    Attributes:
        id: the name configs use (``placement.exempt``) and plans show.
        targets: the rule sets that apply it.
        effect: "place" (a quantizer is placed), "skip" (a quantizer is not placed) or "share" (quantizers
            share one range).
        reason: why, in one sentence.
    """

    id: str
    targets: tuple[str, ...]
    effect: str
    reason: str


RULES: tuple[PlacementRule, ...] = (
    PlacementRule("weighted_inputs", ("tensorrt", "dla"), "place",
                  "Conv, ConvTranspose, Linear and matmul take int8 activation and weight inputs; outputs are "
                  "never quantized (the next layer's input Q sets the output scale)"),
    PlacementRule("residual_shortcut", ("tensorrt",), "skip",
                  "residual add: only the shortcut input (shorter path from the inputs' nearest common "
                  "ancestor; conv-bn-act counts as one step) is quantized, so the add fuses into the conv "
                  "producing the other input and that conv runs int8 in and out"),
    PlacementRule("add_not_residual", ("tensorrt",), "skip",
                  "an add with no conv branch (bias, position embedding, attention mask) stays float: a Q/DQ "
                  "pair before it cannot fuse"),
    PlacementRule("concat_shared", ("tensorrt", "dla"), "share",
                  "no quantizer on a concat (tensorrt); its quantized inputs and its consumers' inputs share one "
                  "range, so the Q that TensorRT moves across the concat cancels"),
    PlacementRule("same_tensor", ("tensorrt", "dla"), "share",
                  "quantizers of one tensor (e.g. the q, k and v projections of one input) share one range: "
                  "TensorRT keeps one Q per tensor"),
    PlacementRule("pad_conv", ("tensorrt",), "place",
                  "no Q/DQ between a pad (F.pad or a padding module) and the conv it feeds: the conv's input "
                  "quantizer moves before the pad (zero, reflection and replication padding commute with Q/DQ), "
                  "so the pad fuses into the int8 conv or runs on int8 data"),
    PlacementRule("resize_float_input", ("tensorrt",), "skip",
                  "no quantizer before resize/upsample: TensorRT moves the next conv's Q across it "
                  "(resize -> Q/DQ -> conv runs int8)"),
    PlacementRule("max_pool_commutes", ("tensorrt",), "skip",
                  "max pooling commutes with Q/DQ: TensorRT moves the neighbouring Q across it, a quantizer of "
                  "its own only adds a pair"),
    PlacementRule("avg_pool_neighbour", ("tensorrt",), "skip",
                  "average pooling is quantized only where a neighbour is (its input is quantized for another "
                  "consumer, or its output feeds a quantized input); elsewhere its pair cannot fuse"),
    PlacementRule("layernorm_conv_input", ("tensorrt",), "skip",
                  "a LayerNorm gets an input quantizer only when a conv feeds it; its body stays float"),
    PlacementRule("attention_seq_len", ("tensorrt",), "skip",
                  f"attention matmuls (two activation operands) are quantized only when the sequence length is "
                  f"at most {MAX_INT8_SEQ_LEN}"),
    PlacementRule("gemv", ("tensorrt",), "skip",
                  "a matmul with an output dimension of 1 (GEMV) cannot use tensor cores: it stays float"),
    PlacementRule("small_gemm", ("tensorrt",), "skip",
                  f"Linear/matmul with K or N below {MIN_GEMM_DIM}: int8 kernels are slower than FP16 there"),
    PlacementRule("small_conv", ("tensorrt",), "skip",
                  f"Conv with fewer than {MIN_GEMM_DIM} input or output channels stays float, except an "
                  "ungrouped square-kernel conv with C_in or C_out divisible by 8 that is the first layer or has "
                  f"C_in or C_out >= {MIN_GEMM_DIM}, and a grouped conv with C_out divisible by 8 and kernels >= 3"),
    PlacementRule("float_ops", ("tensorrt",), "skip",
                  "GELU, softmax, normalization bodies and other ops TensorRT runs in float get no quantizer: "
                  "a Q/DQ pair before them cannot fuse"),
    PlacementRule("dla_every_input", ("dla",), "place",
                  "DLA runs int8 only with a scale on every tensor: every registered op and module quantizes "
                  "its inputs"),
)

# Padding module classes (quantrewrite.nn.modules.quant_padding): off by default, like F.pad.
PAD_MODULES = tuple(f"{kind}Pad{n}d" for kind in ("Zero", "Constant", "Reflection", "Replication") for n in (1, 2, 3))

# Modules and ops that are off by default but that a rule set quantizes (its rules then decide where): a
# config can still turn them off (``functions: {add: {quantize: false}}``).
CANDIDATES: dict[str, frozenset[str]] = {
    "tensorrt": frozenset({"add", "cat", "LayerNorm"}),  # residual_shortcut, concat_shared, layernorm_conv_input
    "dla": frozenset({"add", "cat", "pad", "LayerNorm", *PAD_MODULES}),  # dla_every_input
}

_BY_ID = {r.id: r for r in RULES}


def is_candidate(target: str | None, type_name: str) -> bool:
    """Whether rule set ``target`` quantizes the module class or op ``type_name`` unless a config says not."""
    return target is not None and type_name in CANDIDATES.get(target, ())


def rule(rule_id: str) -> PlacementRule:
    """The rule called ``rule_id`` (KeyError for an unknown id)."""
    return _BY_ID[rule_id]
