"""Fake-quant simulation at any bit width, on the same ONNX graph and tensor names as the export.

Weights of Conv/Gemm/MatMul are rounded per output channel (symmetric, `weight_bits`); each
activation tensor the int8 artifact quantizes gets QuantizeLinear → DequantizeLinear → Clip with
the ranges.json range re-gridded to `activation_bits` levels. Runs in ONNX Runtime in float, so
it measures what the calibration ranges cost at lower precision (W4A8, W8A6) without a kernel.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from gzsq.ranges import WEIGHT_OPS, weight_axis


def _fake_quant_weight(w: np.ndarray, axis: int, bits: int) -> np.ndarray:
    qmax = 2 ** (bits - 1) - 1
    moved = np.moveaxis(w, axis, 0)
    absmax = np.abs(moved.reshape(moved.shape[0], -1)).max(1)
    scale = np.maximum(absmax, 1e-12) / qmax
    shape = (-1,) + (1,) * (moved.ndim - 1)
    q = np.clip(np.round(moved / scale.reshape(shape)), -qmax, qmax) * scale.reshape(shape)
    return np.moveaxis(q, 0, axis).astype(w.dtype)


def fake_quant_model(graph_model: onnx.ModelProto, ranges: dict, tensors: list[str], weight_bits: int = 8,
                     activation_bits: int = 8) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(graph_model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in inits:
            init = inits[node.input[1]]
            w = numpy_helper.to_array(init)
            if w.ndim < 2:
                continue
            axis = weight_axis(node)
            init.CopyFrom(numpy_helper.from_array(_fake_quant_weight(w, axis, weight_bits), init.name))
    levels = 2 ** activation_bits - 1
    outputs = {o.name for o in graph.output}
    new_nodes = []
    for name in tensors:
        entry = ranges["tensors"].get(name)
        if entry is None:
            continue
        rmin, rmax = min(entry["min"], 0.0), max(entry["max"], 0.0)
        scale = np.float32(max(rmax - rmin, 1e-8) / levels)
        zp = int(np.clip(np.round(-rmin / scale), 0, levels))
        fq = f"{name}__fq"
        for node in graph.node:
            for i, inp in enumerate(node.input):
                if inp == name:
                    node.input[i] = fq
        base = f"{name}__fq_"
        graph.initializer.extend([
            numpy_helper.from_array(np.array(scale, np.float32), base + "scale"),
            numpy_helper.from_array(np.array(zp, np.uint8), base + "zp"),
            numpy_helper.from_array(np.array((0 - zp) * scale, np.float32), base + "lo"),
            numpy_helper.from_array(np.array((levels - zp) * scale, np.float32), base + "hi"),
        ])
        new_nodes += [
            helper.make_node("QuantizeLinear", [name, base + "scale", base + "zp"], [base + "q"]),
            helper.make_node("DequantizeLinear", [base + "q", base + "scale", base + "zp"], [base + "dq"]),
            helper.make_node("Clip", [base + "dq", base + "lo", base + "hi"], [fq]),
        ]
        if name in outputs:
            for o in graph.output:
                if o.name == name:
                    o.name = fq
    # Insert each fake-quant chain right after its producer to keep topological order.
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output}
    ordered = list(graph.node)
    inserts: dict[int, list] = {}
    for k in range(0, len(new_nodes), 3):
        src = new_nodes[k].input[0]
        inserts.setdefault(producers.get(src, -1), []).extend(new_nodes[k:k + 3])
    result = inserts.get(-1, [])
    for i, node in enumerate(ordered):
        result.append(node)
        result.extend(inserts.get(i, []))
    del graph.node[:]
    graph.node.extend(result)
    return model
