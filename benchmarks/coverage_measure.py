"""One model of ``bench_coverage.py``, both tools: prints one JSON line (run as a child process).

Run: python benchmarks/coverage_measure.py bert [--threads 1]

The definitions of the columns, the same for both tools (see ``bench_coverage.py``): weight layers and
attention modules are found in the float model; each quantizer of a quantized model is attributed to its
*holder*, the longest prefix of its qualified name that names a module of the float model (both tools keep the
float model's module names). A quantizer held by a weight layer is that layer's; one held by another leaf of
the float model (a pooling or norm layer) is a module quantizer; any other (held by a module with children, or
by the root) quantizes a functional op.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coverage_models import CoverageCase, build

from quantrewrite.export_io import tensor_leaves

CALIB_SEEDS, TEST_SEED = (1, 2), 3
ATTENTION_OPS = ("matmul", "bmm", "baddbmm", "sdpa", "einsum")


def weight_layer_types() -> tuple[type, ...]:
    """The layers that count as weight layers (the one definition of "total")."""
    types: list[type] = [nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention]
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        pass
    else:
        types.append(Conv1D)
    return tuple(types)


def weight_layers(model: nn.Module) -> list[str]:
    kinds = weight_layer_types()
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


def attention_modules(model: nn.Module) -> list[str]:
    """Innermost modules whose class name has "Attention" (BertSelfAttention, not BertAttention)."""
    found = [name for name, module in model.named_modules() if "Attention" in type(module).__name__]
    return [name for name in found if not any(other.startswith(f"{name}.") for other in found if other != name)]


def outputs_of(value: Any) -> torch.Tensor:
    """Every floating-point output tensor, flattened and concatenated."""
    tensors = [t.detach().reshape(-1).double() for _, t in tensor_leaves(_plain(value), "") if t.is_floating_point()]
    return torch.cat(tensors)


def _plain(value: Any) -> Any:
    return value.to_tuple() if hasattr(value, "to_tuple") else value


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    noise = float((reference - approx).pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float(reference.pow(2).sum()) / noise)


def _holder(name: str, modules: set[str]) -> str:
    parts = name.split(".")[:-1]
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts)


def _inside(name: str, scope: str) -> bool:
    return scope == "" or name == scope or name.startswith(f"{scope}.")


def coverage(float_model: nn.Module, qmodel: nn.Module, quantizer_type: type, run_test) -> dict[str, Any]:
    """Weight layers and attention modules quantized, op quantizers, from one test forward with hooks."""
    layers, attentions = weight_layers(float_model), attention_modules(float_model)
    modules = dict(float_model.named_modules())
    leaves = {name for name, module in modules.items() if not list(module.children())}
    quantizers = {name: q for name, q in qmodel.named_modules() if isinstance(q, quantizer_type)}
    holders = {name: _holder(name, set(modules)) for name in quantizers}
    # a global hook: a hook on the module itself would turn off torch's fused TransformerEncoderLayer path
    names = {id(module): name for name, module in qmodel.named_modules()}
    called: Counter[str] = Counter()
    hook = register_module_forward_hook(lambda module, *_: called.update([names.get(id(module), "")]))
    try:
        out = run_test(qmodel)
    finally:
        hook.remove()

    def live(name: str) -> bool:
        q = quantizers[name]
        return bool(q.is_enabled) and q.amax is not None

    by_holder: dict[str, list[str]] = {}
    for name, holder in holders.items():
        by_holder.setdefault(holder, []).append(name)
    unquantized = []
    for layer in layers:
        own = [q for q in by_holder.get(layer, []) if "weight_quantizer" in q[len(layer) + 1:].split(".")[0]]
        if not (own and all(live(q) for q in own) and called[layer]):
            unquantized.append(layer)
    layer_set = set(layers)
    ops = [q for holder, names in by_holder.items() if holder not in leaves and holder not in layer_set for q in names]
    working = [q for q in ops if live(q) and called[q]]
    attended = [a for a in attentions if any(_inside(holders[q], a) for q in working)]
    return {"layers": layers, "unquantized": unquantized, "attentions": attentions, "attended": attended,
            "ops": ops, "working_ops": working, "output": out}


def _weights_cell(c: dict[str, Any]) -> str:
    total = len(c["layers"])
    return f"{total - len(c['unquantized'])}/{total}"


def _attention_cell(c: dict[str, Any]) -> str:
    return f"{len(c['attended'])}/{len(c['attentions'])}" if c["attentions"] else "-"


def measure_quantrewrite(case: CoverageCase, reference: torch.Tensor, tmp: Path) -> dict[str, Any]:
    from quantrewrite import TensorQuantizer, calibrate, quantize_model
    from quantrewrite.export import export_onnx

    qmodel = quantize_model(case.model, "int8_default", example_inputs=case.inputs(CALIB_SEEDS[0]))
    calibrate(qmodel, [case.inputs(seed) for seed in CALIB_SEEDS], progress=False)
    c = coverage(case.model, qmodel, TensorQuantizer, lambda m: _test_forward(case, m))
    plan = qmodel.quant_plan
    sites = Counter(e.target for e in plan.functions() if e.quantized)
    row = _common_cells(c, reference)
    row["op quantizers"] += f" ({', '.join(f'{op} x{n}' for op, n in sites.items()) or 'no sites'})"
    row["untraced"] = str(len(plan.untraced))
    try:
        report = export_onnx(qmodel, (), tmp / "quantrewrite.onnx", kwargs=case.inputs(TEST_SEED))
        fell_back = " after TorchScript failed" if any("dynamo" in w for w in report.warnings) else ""
        row["export"] = f"yes ({report.exporter}{fell_back}, {report.qdq_pairs} Q/DQ)"
    except Exception as error:  # noqa: BLE001 - a failed export is a cell of the table
        reason = error.report.failures[0] if getattr(error, "report", None) and error.report.failures else error
        row["export"] = f"no: {type(error).__name__}: {reason}"
    return row


def measure_modelopt(case: CoverageCase, reference: torch.Tensor, tmp: Path) -> dict[str, Any]:
    try:
        import modelopt.torch.quantization as mtq
        from modelopt.torch.quantization.nn import TensorQuantizer
    except ImportError as error:
        return {"error": f"ModelOpt not installed ({error})"}
    model = copy.deepcopy(case.model)

    def forward_loop(m: nn.Module) -> None:
        for seed in CALIB_SEEDS:
            m(**case.inputs(seed))

    with torch.no_grad():
        mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)
    model.eval()
    c = coverage(case.model, model, TensorQuantizer, lambda m: _test_forward(case, m))
    row = _common_cells(c, reference)
    row["untraced"] = "- (no tracing)"
    row["export"] = _export_peer(model, case, tmp / "modelopt.onnx")
    return row


class _Positional(nn.Module):
    """The model behind positional tensor inputs, returning its output tensors as a tuple (for torch.onnx)."""

    def __init__(self, model: nn.Module, kwargs: dict[str, Any]):
        super().__init__()
        self.model, self.keys = model, [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
        self.constants = {k: v for k, v in kwargs.items() if k not in self.keys}

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.keys, tensors)), **self.constants)
        return tuple(t for _, t in tensor_leaves(_plain(out), ""))


def _export_peer(model: nn.Module, case: CoverageCase, path: Path) -> str:
    from quantrewrite.export_verify import compare_outputs, count_qdq_pairs, load_checked, run_onnxruntime

    kwargs = case.inputs(TEST_SEED)
    wrapper = _Positional(model, kwargs).eval()
    tensors = tuple(kwargs[k] for k in wrapper.keys)
    try:
        with torch.no_grad():
            reference = [t.numpy() for t in wrapper(*tensors)]
            torch.onnx.export(wrapper, tensors, str(path), opset_version=17, dynamo=False)
        onnx_model, _ = load_checked(str(path))
        pairs, _ = count_qdq_pairs(onnx_model.graph)
        result = compare_outputs(reference, run_onnxruntime(str(path), [t.numpy() for t in tensors]))
    except Exception as error:  # noqa: BLE001 - the peer's failure is a cell of the table
        return f"no: {type(error).__name__}: {error}"
    if result.failures:
        return f"no: {result.failures[0]}"
    return f"yes (torchscript, {pairs} Q/DQ)"


def _common_cells(c: dict[str, Any], reference: torch.Tensor) -> dict[str, Any]:
    return {"weights": _weights_cell(c), "attention": _attention_cell(c),
            "op quantizers": f"{len(c['working_ops'])}/{len(c['ops'])}",
            "SQNR dB": f"{sqnr_db(reference, outputs_of(c['output'])):.1f}", "unquantized": c["unquantized"]}


def _test_forward(case: CoverageCase, model: nn.Module) -> Any:
    with torch.no_grad():
        return model(**case.inputs(TEST_SEED))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    case = build(args.name)
    reference = outputs_of(_test_forward(case, case.model))
    row: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tool, measure in (("quantrewrite", measure_quantrewrite), ("ModelOpt", measure_modelopt)):
            try:
                row[tool] = measure(case, reference, Path(tmp))
            except Exception as error:  # noqa: BLE001 - a failing tool is a cell of the table, not a crash
                row[tool] = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
