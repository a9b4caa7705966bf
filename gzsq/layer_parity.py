"""Per-layer parity: which quantized tensor is the first where a runtime's int8 kernels and the
fake-quant simulation stop agreeing. Values are compared on the integer grid of each tensor (in
quantization steps), so rounding-at-ties noise reads as ≤ 1 step and a real divergence stands out.

Two backends share the bookkeeping here:
- QDQ ONNX (ONNX Runtime, and OpenVINO, whose IR is converted from the same QDQ file): the model
  is cut after each quantized tensor's DequantizeLinear, in graph order, and the cut model runs
  in the runtime and in the simulation (graph optimisations off). The cut keeps every node before
  the tensor, so the runtime fuses them as it does in the full model.
- Anything that can list (tensor name, runtime values, simulated values) itself (TFLite).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

# A tensor "diverges" when more than this share of its elements differ by over one step, or any
# element by more than this many steps: single-step differences are rounding at ties.
MISMATCH_PCT = 5.0
MAX_STEPS = 2.0


def compare(name: str, runtime: np.ndarray, simulated: np.ndarray, step: float) -> dict:
    # Both sides sit on the tensor's grid, so the difference is a whole number of steps; rounding
    # to 1e-3 removes the float noise of dequantized values (1.000005 steps is one step).
    diff = np.round(np.abs(runtime.astype(np.float64) - simulated.astype(np.float64)) / max(step, 1e-30), 3)
    row = {"tensor": name, "max_steps": float(diff.max()), "mean_steps": float(diff.mean()),
           "over_one_step_pct": float((diff > 1.0).mean() * 100)}
    row["diverged"] = bool(row["over_one_step_pct"] > MISMATCH_PCT or row["max_steps"] > MAX_STEPS)
    return row


def summarise_rows(rows: list[dict], complete: bool) -> dict:
    first = next((r["tensor"] for r in rows if r["diverged"]), None)
    return {"first_divergent_tensor": first, "tensors_compared": len(rows), "complete": complete,
            "rule": f"diverged: > {MISMATCH_PCT}% of elements off by more than one step, or any by more than {MAX_STEPS}",
            "tensors": rows}


def quantized_activations(qdq: onnx.ModelProto) -> list[tuple[str, str, float]]:
    """(tensor name, DequantizeLinear output, scale) of each quantized activation, in graph order."""
    from onnx import numpy_helper

    inits = {i.name: i for i in qdq.graph.initializer}
    dq_of = {n.input[0]: n for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    out = []
    for node in qdq.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        dq = dq_of.get(node.output[0])
        if dq is None or node.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]])
        if scale.size != 1:
            continue
        out.append((node.input[0], dq.output[0], float(scale.reshape(-1)[0])))
    return out


def qdq_layer_parity(qdq_path: str | Path, images: np.ndarray, make_runtime: Callable[[Path], Callable],
                     make_simulation: Callable[[Path], Callable], time_budget_s: float = 90.0) -> dict:
    """Cut the QDQ model after each quantized tensor; stop at the first divergent one (or when the
    time budget is spent, reported as incomplete)."""
    from onnx.utils import Extractor

    qdq = onnx.shape_inference.infer_shapes(onnx.load(str(qdq_path)))
    inputs = [i.name for i in qdq.graph.input if i.name not in {t.name for t in qdq.graph.initializer}]
    extractor = Extractor(qdq)
    rows, start = [], time.time()
    outputs = {o.name for o in qdq.graph.output}
    with tempfile.TemporaryDirectory(prefix="gzsq-layers-") as tmp:
        for index, (name, dq_output, step) in enumerate(quantized_activations(qdq)):
            if time.time() - start > time_budget_s:
                return summarise_rows(rows, complete=False)
            if dq_output in outputs:
                continue
            cut = extractor.extract_model(inputs, [dq_output])
            cut.ir_version = qdq.ir_version
            del cut.opset_import[:]
            cut.opset_import.extend(qdq.opset_import)
            path = Path(tmp) / f"cut{index}.onnx"
            onnx.save(cut, str(path))
            row = compare(name, make_runtime(path)(images), make_simulation(path)(images), step)
            rows.append(row)
            if row["diverged"]:
                return summarise_rows(rows, complete=True)
    return summarise_rows(rows, complete=True)


def listed_layer_parity(pairs: Iterable[tuple[str, np.ndarray, np.ndarray, float]]) -> dict:
    rows = []
    for name, runtime, simulated, step in pairs:
        rows.append(compare(name, runtime, simulated, step))
    return summarise_rows(rows, complete=True)
