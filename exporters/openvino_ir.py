"""OpenVINO IR exporter: the QDQ ONNX of ranges.json (gzsq.exporters.onnx_qdq, same scales and
saturation-safe weight scheme) converted by `openvino.convert_model`. Activations become
FakeQuantize ops (levels=256) whose limits are the ranges.json grid; weights int8 constants.
Saved without FP16 compression so the artifact holds exactly the quantized model.

One placement differs from the ONNX artifact: a Conv/Gemm output whose only use is a residual Add
(whose own output is quantized) keeps no FakeQuantize. OpenVINO's CPU plugin fuses the Add into
the convolution as a sum post-op and skips that intermediate rounding anyway (measured on the zoo
ResNets: one step off on ~19 % of the sum's elements vs a simulation that rounds there). Without
the FakeQuantize, the simulation of the IR computes what OpenVINO computes: top-1 parity on the
Fixup ResNet went from 99.50 % to 100 %."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from gzsq.config import check_output_layer
from gzsq.errors import GzsqError
from gzsq.exporters.onnx_qdq import OnnxExportResult, drop_requantization, export_onnx_qdq, qdq_simulator
from gzsq.fileio import atomic_path, ensure_writable_dir
from gzsq.targets import resolve_target


@dataclass(frozen=True)
class OpenVinoExportResult:
    path: Path
    weight_bits: int
    scheme: str
    quantized_tensors: list[str]


def _openvino():
    try:
        import openvino as ov
        return ov
    except ImportError:
        raise GzsqError("the OpenVINO exporter needs openvino; pip install openvino==2026.4.1") from None


def fake_quantize_limits(xml_path: str | Path) -> list[dict]:
    """(input_low, input_high, output_low, output_high, levels) of every activation FakeQuantize."""
    ov = _openvino()
    model = ov.Core().read_model(str(xml_path))
    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        limits = []
        for i in range(1, 5):
            source = op.input_value(i).get_node()
            if source.get_type_name() != "Constant":
                break
            limits.append(np.asarray(source.get_data(), np.float64))
        if len(limits) == 4:
            out.append({"name": op.get_friendly_name(), "input_low": limits[0], "input_high": limits[1],
                        "output_low": limits[2], "output_high": limits[3], "levels": int(op.get_levels())})
    return out


def _save_ir(ov, model, out_path: Path, tmp: Path) -> None:
    """Save uncompressed into `tmp` (same filesystem), then move .bin first and .xml last, so a
    reader never sees an .xml without its weights and nothing half-written is left behind."""
    staged = tmp / out_path.name
    ov.save_model(model, str(staged), compress_to_fp16=False)
    staged.with_suffix(".bin").replace(out_path.with_suffix(".bin"))
    staged.replace(out_path)


def _rt_info(artifact: str | Path, key: str, default: str) -> str:
    model = _openvino().Core().read_model(str(artifact))
    return model.get_rt_info(["gzsq", key]).astype(str) if model.has_rt_info(["gzsq", key]) else default


FUSED_SUM_PRODUCERS = ("Conv", "Gemm", "MatMul")


def sum_fused_requantizations(qdq: onnx.ModelProto, graph_model: onnx.ModelProto) -> list[str]:
    """Tensors whose QuantizeLinear → DequantizeLinear only feeds residual Adds that are themselves
    requantized, and whose producer in the float graph is a Conv/Gemm/MatMul (a tensor whose ReLU
    the quantizer folded into its zero point keeps its quantizer: dropping it would drop the ReLU)."""
    float_producer = {o: n.op_type for n in graph_model.graph.node for o in n.output}
    initializers = {i.name for i in qdq.graph.initializer}
    consumers: dict[str, list] = {}
    for node in qdq.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def requantized(node) -> bool:
        return any(c.op_type == "QuantizeLinear" for c in consumers.get(node.output[0], []))

    found = []
    for q in qdq.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in initializers:
            continue
        if float_producer.get(q.input[0]) not in FUSED_SUM_PRODUCERS or len(consumers.get(q.input[0], [])) != 1:
            continue
        dqs = consumers.get(q.output[0], [])
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
            continue
        users = consumers.get(dqs[0].output[0], [])
        if users and all(u.op_type == "Add" and requantized(u) for u in users):
            found.append(q.input[0])
    return found


def openvino_qdq(graph_model: onnx.ModelProto, ranges: dict, out_path: Path, target: str,
                 output_layer: str = "float") -> tuple:
    """The QDQ ONNX an IR is converted from (and simulated by): the ONNX artifact less the
    requantizations OpenVINO fuses away. Returns (export result, tensors left unquantized)."""
    qdq = export_onnx_qdq(graph_model, ranges, out_path, target, float_outputs=output_layer == "float")
    model = onnx.load(str(qdq.path))
    dropped = sum_fused_requantizations(model, graph_model)
    if dropped:
        model = drop_requantization(model, dropped)
        with atomic_path(out_path) as tmp_path:
            onnx.save(model, str(tmp_path))
    scheme = qdq.scheme + (f"; {len(dropped)} conv outputs feeding a residual Add not requantized "
                           "(OpenVINO fuses the Add into the convolution)" if dropped else "")
    kept = [t for t in qdq.quantized_tensors if t not in dropped]
    return OnnxExportResult(qdq.path, qdq.weight_bits, scheme, kept), dropped


def export_openvino(graph_model: onnx.ModelProto, ranges: dict, out_path: str | Path, target: str = "auto",
                    output_layer: str = "float") -> OpenVinoExportResult:
    check_output_layer(output_layer)
    ov = _openvino()
    out_path = Path(out_path)
    if out_path.suffix != ".xml":
        raise GzsqError(f"OpenVINO IR is written as NAME.xml + NAME.bin; give an .xml path, not {out_path.name}")
    ensure_writable_dir(out_path.parent if str(out_path.parent) else Path("."))
    with tempfile.TemporaryDirectory(prefix="gzsq-ov-", dir=out_path.parent) as tmp:
        qdq, _ = openvino_qdq(graph_model, ranges, Path(tmp) / "qdq.onnx", target, output_layer)
        try:
            model = ov.convert_model(str(qdq.path))
        except Exception as e:
            raise GzsqError(f"openvino.convert_model failed on the QDQ model ({str(e).splitlines()[0][:200]})") from None
        model.set_rt_info(qdq.scheme, ["gzsq", "scheme"])
        model.set_rt_info(ranges.get("model_sha256", ""), ["gzsq", "model_sha256"])
        model.set_rt_info(resolve_target(target).name, ["gzsq", "target"])
        model.set_rt_info(output_layer, ["gzsq", "output_layer"])
        _save_ir(ov, model, out_path, Path(tmp))
    return OpenVinoExportResult(out_path, qdq.weight_bits, qdq.scheme.replace("uint8 activations", "FakeQuantize (256 levels) activations"),
                                qdq.quantized_tensors)


class OpenVinoExporter:
    """Entry point `openvino` of the gzsq.exporters group."""

    format = "openvino"
    suffix = ".xml"
    runtime = "openvino"

    default_output_layer = "float"

    def export(self, graph_model: onnx.ModelProto, ranges: dict, out_path: str | Path, target: str = "auto",
               output_layer: str | None = None) -> OpenVinoExportResult:
        return export_openvino(graph_model, ranges, out_path, target, output_layer or self.default_output_layer)

    def describe(self, artifact: str | Path) -> str:
        return _rt_info(artifact, "scheme", "not exported by gzsq (no gzsq scheme in rt_info)")

    def output_layer_of(self, artifact: str | Path) -> str | None:
        return _rt_info(artifact, "output_layer", "") or None

    def export_float(self, graph_model: onnx.ModelProto, out_path: str | Path) -> Path:
        ov = _openvino()
        out_path = Path(out_path)
        with tempfile.TemporaryDirectory(prefix="gzsq-ov-", dir=out_path.parent) as tmp:
            src = Path(tmp) / "float.onnx"
            onnx.save(graph_model, str(src))
            _save_ir(ov, ov.convert_model(str(src)), out_path, Path(tmp))
        return out_path

    def layer_parity(self, graph_model: onnx.ModelProto, ranges: dict, artifact: str | Path, images: np.ndarray) -> dict:
        """Cuts of the QDQ ONNX the IR comes from, each compiled by OpenVINO (its ONNX frontend is
        the one convert_model uses) and run against the simulation of the same cut."""
        from gzsq.layer_parity import qdq_layer_parity
        from gzsq.runtimes.onnxruntime_harness import OnnxRuntimeHarness
        from gzsq.runtimes.openvino_harness import OpenVinoHarness

        with tempfile.TemporaryDirectory(prefix="gzsq-ov-layers-") as tmp:
            qdq, _ = openvino_qdq(graph_model, ranges, Path(tmp) / "qdq.onnx", _rt_info(artifact, "target", "auto"),
                                  _rt_info(artifact, "output_layer", "float"))
            return qdq_layer_parity(qdq.path, images, lambda p: OpenVinoHarness(p).run,
                                    lambda p: OnnxRuntimeHarness(p, simulate=True).run)

    def simulator(self, graph_model: onnx.ModelProto, ranges: dict, artifact: str | Path):
        """Fake-quant simulation of the artifact: the QDQ ONNX it was converted from, with ORT's
        graph optimisations off (QuantizeLinear/DequantizeLinear in float)."""
        with tempfile.TemporaryDirectory(prefix="gzsq-ov-sim-") as tmp:  # ORT reads the file at session creation
            qdq, _ = openvino_qdq(graph_model, ranges, Path(tmp) / "qdq.onnx", _rt_info(artifact, "target", "auto"),
                                  _rt_info(artifact, "output_layer", "float"))
            return qdq_simulator(qdq.path)
