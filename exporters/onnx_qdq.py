"""ONNX QDQ exporter: ONNX Runtime's quantizer fed the exact scales of ranges.json (no re-calibration).

Scales reach ORT twice, on purpose: a calibration cache holding every tensor's [min, max] (so
ORT has nothing to calibrate) and TensorQuantOverrides holding the exact scale/zero-point (so
ORT's own rounding of min/max cannot drift from ranges.json).

Saturation-safe weights: x86 CPUs without VNNI (AVX2 only) compute u8×s8 products with
`vpmaddubsw`, which adds pairs of products into int16 and saturates when both are large.
Limiting weights to 7 bits (|q| ≤ 63) keeps every pair below 2^15, so the runtime matches the
float simulation. The scheme is chosen per target and recorded in the model's metadata.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from gzsq.config import check_output_layer
from gzsq.errors import GzsqError
from gzsq.fileio import atomic_path, sha256_bytes
from gzsq.targets import Target, resolve_target


@dataclass(frozen=True)
class OnnxExportResult:
    path: Path
    weight_bits: int
    scheme: str
    quantized_tensors: list[str]


def quantize_linear_params(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tensor name: (scale, zero_point)} of every QuantizeLinear in a QDQ model."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    suffix = "_QuantizeLinear_Input"  # ORT renames a quantized graph output's float tensor
    out = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            name = node.input[0]
            if name.endswith(suffix) and name[: -len(suffix)] in outputs:
                name = name[: -len(suffix)]
            out[name] = (inits[node.input[1]], inits[node.input[2]])
    return out


def drop_requantization(qdq: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """Remove the QuantizeLinear → DequantizeLinear pair on each named activation tensor: its
    consumers read the unrounded tensor. A pair that ends at a graph output hands the output's
    name to the tensor's producer."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    nodes = list(model.graph.node)
    outputs = {o.name for o in model.graph.output}
    producer = {o: n for n in nodes for o in n.output}
    wanted, drop = set(tensors), set()
    for q in nodes:
        if q.op_type != "QuantizeLinear" or q.input[0] not in wanted:
            continue
        dqs = [n for n in nodes if q.output[0] in n.input]
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
            continue
        source, dq_out = q.input[0], dqs[0].output[0]
        if dq_out in outputs:
            if source not in producer or any(source in n.input for n in nodes if n is not q):
                continue
            out = producer[source].output
            out[list(out).index(source)] = dq_out
        else:
            for n in nodes:
                for k, name in enumerate(n.input):
                    if name == dq_out:
                        n.input[k] = source
        drop.update({id(q), id(dqs[0])})
    kept = [n for n in nodes if id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def dequantized_outputs(qdq: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the QuantizeLinear → DequantizeLinear pair on each graph output, so the last layer's
    result leaves the model unrounded and unclipped (as NNCF and AIMET place quantizers). Its
    inputs and weights stay int8. Calibration, data-free or not, sees few of the extreme logits a
    classifier produces; requantizing them to a calibrated range clips exactly the values top-1
    is decided by (ImageNet MobileNetV2, distilled ranges: 26 % → 93 % top-1 agreement)."""
    producer = {o: n for n in qdq.graph.node for o in n.output}
    initializers = {i.name for i in qdq.graph.initializer}
    sources = []
    for output in qdq.graph.output:
        dq = producer.get(output.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in initializers:
            sources.append(q.input[0])
    return drop_requantization(qdq, sources)


def export_onnx_qdq(graph_model: onnx.ModelProto, ranges: dict, out_path: str | Path, target: Target | str = "auto",
                    float_outputs: bool = True) -> OnnxExportResult:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    target = resolve_target(target)
    tensors = ranges["tensors"]
    with tempfile.TemporaryDirectory(prefix="gzsq-qdq-") as tmp:
        src = Path(tmp) / "float.onnx"
        onnx.save(graph_model, str(src))
        cache = Path(tmp) / "calibration_cache.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, {
            name: TensorData(lowest=np.float32(t["min"]), highest=np.float32(t["max"])) for name, t in tensors.items()}), cache)
        overrides = {name: [{"scale": np.array(t["scale"], np.float32), "zero_point": np.array(t["zero_point"], np.uint8)}]
                     for name, t in tensors.items()}
        dst = Path(tmp) / "qdq.onnx"
        try:
            quantize_static(str(src), str(dst), calibration_data_reader=None, calibration_cache_path=str(cache),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=target.weight_bits == 7,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"TensorQuantOverrides": overrides, "WeightSymmetric": True,
                                           "ActivationSymmetric": False})
        except Exception as e:
            raise GzsqError(f"ONNX Runtime could not quantize the graph ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                            "check that ranges.json belongs to this model") from None
        qdq = onnx.load(str(dst))
    if float_outputs:
        qdq = dequantized_outputs(qdq)
    scheme = (f"uint8 activations, int8 per-channel symmetric weights limited to {target.weight_bits} bits ({target.reason})"
              + ("; model outputs in float (the last layer's result is not requantized)" if float_outputs else ""))
    meta = {"gzsq.ranges_sha256": sha256_bytes(json.dumps(ranges, sort_keys=True).encode()),
            "gzsq.model_sha256": ranges.get("model_sha256", ""), "gzsq.target": target.name,
            "gzsq.weight_bits": str(target.weight_bits), "gzsq.scheme": scheme,
            "gzsq.output_layer": "float" if float_outputs else "int8",
            "gzsq.calibration": json.dumps(ranges.get("calibration", {}), sort_keys=True)}
    for key, value in meta.items():
        prop = qdq.metadata_props.add()
        prop.key, prop.value = key, value
    with atomic_path(out_path) as tmp_path:
        onnx.save(qdq, str(tmp_path))
    return OnnxExportResult(Path(out_path), target.weight_bits, scheme, sorted(quantize_linear_params(qdq)))


class OnnxQdqExporter:
    """Entry point `onnx` of the gzsq.exporters group."""

    format = "onnx"
    suffix = ".onnx"
    runtime = "onnxruntime"

    default_output_layer = "float"

    def export(self, graph_model: onnx.ModelProto, ranges: dict, out_path: str | Path, target: str = "auto",
               output_layer: str | None = None) -> OnnxExportResult:
        check_output_layer(output_layer)
        return export_onnx_qdq(graph_model, ranges, out_path, target, float_outputs=(output_layer or self.default_output_layer) == "float")

    def describe(self, artifact: str | Path) -> str:
        return _metadata(artifact).get("gzsq.scheme", "not exported by gzsq (no gzsq.scheme metadata)")

    def output_layer_of(self, artifact: str | Path) -> str | None:
        return _metadata(artifact).get("gzsq.output_layer")

    def export_float(self, graph_model: onnx.ModelProto, out_path: str | Path) -> Path:
        with atomic_path(out_path) as tmp_path:
            onnx.save(graph_model, str(tmp_path))
        return Path(out_path)

    def simulator(self, graph_model: onnx.ModelProto, ranges: dict, artifact: str | Path):
        """Fake-quant simulation of the artifact: the same QDQ file with graph optimisations off,
        so every QuantizeLinear/DequantizeLinear runs in float and no int8 kernel is involved."""
        return qdq_simulator(artifact)


    def layer_parity(self, graph_model: onnx.ModelProto, ranges: dict, artifact: str | Path, images: np.ndarray) -> dict:
        from gzsq.layer_parity import qdq_layer_parity
        from gzsq.runtimes.onnxruntime_harness import OnnxRuntimeHarness

        return qdq_layer_parity(artifact, images, lambda p: OnnxRuntimeHarness(p).run,
                                lambda p: OnnxRuntimeHarness(p, simulate=True).run)


def _metadata(artifact: str | Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(artifact), load_external_data=False).metadata_props}


def qdq_simulator(qdq_path: str | Path):
    from gzsq.runtimes.onnxruntime_harness import OnnxRuntimeHarness

    return OnnxRuntimeHarness(qdq_path, simulate=True).run
