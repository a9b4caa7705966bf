"""TFLite and OpenVINO artifacts: scales read back from the files equal ranges.json, the TFLite
graph is fully int8, each runtime agrees with the simulation of its own artifact within one
output quantization step, and `gzsq run/verify` write the report and gate on --max-drop."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import export_legacy
from gzsq.cli import main
from gzsq.config import CalibrationConfig, DistillConfig, InputDomain
from gzsq.distill import distill
from gzsq.errors import GzsqError
from gzsq.exporters.onnx_qdq import OnnxQdqExporter
from gzsq.models import load_model
from gzsq.ranges import build_ranges, prepare_for_quantization, save_ranges
from gzsq.verify import EvalSet, verify_artifact

pytest.importorskip("ai_edge_litert")
pytest.importorskip("litert_torch")
pytest.importorskip("openvino")


class ResidualChain(nn.Module):
    """Chained residual adds and ReLU6 (MobileNetV2's pattern the stock quantizer leaves in float)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU6(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                                                  nn.ReLU6(), nn.Conv2d(16, 8, 1)) for _ in range(3))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.clamp(self.stem(x), 0, 6)
        for block in self.blocks:
            x = x + block(x)
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("residual")
    export_legacy(ResidualChain().eval(), out / "residual.onnx", shape=(1, 3, 12, 12))
    model = load_model(str(out / "residual.onnx"))
    cal = distill(model, DistillConfig(method="gzsq", samples=16, batch_size=8, max_steps=10), InputDomain(), progress=False)
    ranges = build_ranges(model, cal, CalibrationConfig(), progress=False)
    save_ranges(ranges, out / "ranges.json")
    return model, ranges, out


def _tflite_tensors(path):
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    graph = model.subgraphs[0]
    return model, graph, schema


def test_tflite_scales_equal_ranges_and_graph_is_fully_int8(residual):
    from gzsq.exporters.tflite import export_tflite, float_op_count, int8_params

    model, ranges, out = residual
    result = export_tflite(prepare_for_quantization(model), ranges, out / "m.tflite", io_dtype="int8")
    data = (out / "m.tflite").read_bytes()
    count, ops = float_op_count(data)
    assert count == 0, ops
    assert result.float_ops == []
    grid = {int8_params(t) for t in ranges["tensors"].values()}
    _, graph, schema = _tflite_tensors(out / "m.tflite")
    activations = [t for t in graph.tensors if t.type == schema.TensorType.INT8 and t.quantization is not None
                   and t.quantization.scale is not None and len(t.quantization.scale) == 1]
    assert len(activations) >= 10
    for t in activations:
        params = (float(np.float32(t.quantization.scale[0])), int(t.quantization.zeroPoint[0]))
        assert params in grid, (t.name, params)

    def params(t):
        return float(np.float32(t.quantization.scale[0])), int(t.quantization.zeroPoint[0])

    # Model input and output (int8 I/O) carry exactly the ranges.json parameters of those tensors.
    assert params(graph.tensors[graph.inputs[0]]) == int8_params(ranges["tensors"][model.onnx_model.graph.input[0].name])
    assert params(graph.tensors[graph.outputs[0]]) == int8_params(ranges["tensors"][model.onnx_model.graph.output[0].name])
    # Weights: int8 per-channel with the ranges.json scales.
    weight_scales = [np.asarray(w["scale"], np.float32) for w in ranges["weights"].values()]
    per_channel = [t for t in graph.tensors if t.type == schema.TensorType.INT8 and t.quantization is not None
                   and t.quantization.scale is not None and len(t.quantization.scale) > 1]
    assert per_channel
    for t in per_channel:
        assert any(len(s) == len(t.quantization.scale) and np.array_equal(s, np.asarray(t.quantization.scale, np.float32))
                   for s in weight_scales), t.name


def test_tflite_float_io_is_full_int8_by_default(residual):
    """Float I/O adds only the boundary QUANTIZE/DEQUANTIZE: every operator inside is int8."""
    from gzsq.exporters.tflite import TfliteExporter, float_op_count, read_metadata

    model, ranges, out = residual
    result = TfliteExporter().export(prepare_for_quantization(model), ranges, out / "d.tflite")
    data = (out / "d.tflite").read_bytes()
    assert float_op_count(data) == (0, []) and result.float_ops == []
    assert read_metadata(data)["gzsq.output_layer"] == "int8" and "fully int8" in result.scheme


def test_tflite_float_output_layer_is_the_only_float_op(residual):
    """--output-layer float: the last layer's result is not requantized (like the ONNX and
    OpenVINO defaults); its FULLY_CONNECTED is the only float op, and no float op sits between
    int8 ops."""
    from gzsq.exporters.tflite import TfliteExporter, export_tflite, float_islands, float_op_count, read_metadata

    model, ranges, out = residual
    export_tflite(prepare_for_quantization(model), ranges, out / "f.tflite", io_dtype="float", output_layer="float")
    data = (out / "f.tflite").read_bytes()
    count, ops = float_op_count(data)
    assert set(ops) <= {"FULLY_CONNECTED", "DEQUANTIZE"} and ops.count("FULLY_CONNECTED") == 1, ops
    assert float_islands(data) == []
    assert read_metadata(data)["gzsq.output_layer"] == "float"
    with pytest.raises(GzsqError, match="int8 I/O needs an int8 output layer"):
        TfliteExporter().export(prepare_for_quantization(model), ranges, out / "x.tflite", io_dtype="int8", output_layer="float")
    assert not (out / "x.tflite").exists()


class EdgeActivations(nn.Module):
    """MobileNetV3's activations — HardSwish (inlined by the ONNX pipeline as HardSigmoid → Mul) and
    a squeeze-excite gate with a lone HardSigmoid — and PReLU, per channel and shared (face and
    edge models). TFLite has no int8 hard-sigmoid kernel, and litert-torch lowers PReLU to float."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.squeeze, self.excite = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.prelu_channels, self.prelu_shared = nn.PReLU(8), nn.PReLU()
        with torch.no_grad():
            self.prelu_channels.weight.uniform_(-0.2, 0.5)  # trained slopes differ per channel, some negative
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = nn.functional.hardswish(self.conv1(x))
        x = self.prelu_channels(self.conv2(x))
        x = x * nn.functional.hardsigmoid(self.excite(torch.relu(self.squeeze(x.mean((2, 3), keepdim=True)))))
        x = self.prelu_shared(self.conv3(x))
        return self.fc(x.mean((2, 3)))


def test_tflite_edge_activations_stay_int8(tmp_path):
    from gzsq.exporters.tflite import export_tflite, float_op_count
    from gzsq.tflite_flatbuffer import op_name, read_model

    torch.manual_seed(0)
    export_legacy(EdgeActivations().eval(), tmp_path / "edge.onnx", shape=(1, 3, 12, 12))
    model = load_model(str(tmp_path / "edge.onnx"))
    graph = prepare_for_quantization(model)
    assert {"HardSigmoid", "PRelu"} <= {n.op_type for n in graph.graph.node}
    cal = distill(model, DistillConfig(method="gzsq", samples=16, batch_size=8, max_steps=5), InputDomain(), progress=False)
    ranges = build_ranges(model, cal, CalibrationConfig(), progress=False)
    result = export_tflite(graph, ranges, tmp_path / "edge.tflite")
    data = (tmp_path / "edge.tflite").read_bytes()
    assert float_op_count(data) == (0, []), result.float_ops
    tfl = read_model(data)
    ops = [op_name(tfl, op) for op in tfl.subgraphs[0].operators]
    # no layout TRANSPOSE around the PReLU ops: only the input one and the one before the final MEAN
    assert "HARD_SWISH" in ops and ops.count("MINIMUM") == 2 and ops.count("TRANSPOSE") == 2, " ".join(ops)
    x = np.random.default_rng(3).standard_normal((32, 3, 12, 12)).astype(np.float32)
    row = verify_artifact("tflite", result.path, graph, ranges, [EvalSet(x, None, "agreement", "noise")], threads=1)["evaluations"][0]
    assert row["output_error_steps_max"] <= 1.0 + 1e-5 and row["runtime_vs_simulation_agreement_pct"] == 100.0
    # and the TFLite int8 model is about as close to FP32 as the QDQ model of the same ranges and
    # the same (int8) output layer in ORT, where these activations take one rounding each
    qdq = OnnxQdqExporter().export(graph, ranges, tmp_path / "edge.q.onnx", output_layer="int8").path
    onnx_row = verify_artifact("onnx", qdq, graph, ranges, [EvalSet(x, None, "agreement", "noise")], threads=1)["evaluations"][0]
    assert row["output_snr_db"] >= onnx_row["output_snr_db"] - 1.0  # measured: equal within 0.1 dB


def test_onnx_output_layer_placement(residual):
    """ONNX (and OpenVINO) leave the model output unrequantized by default; int8 requantizes it."""
    import onnx

    from gzsq.exporters.onnx_qdq import OnnxQdqExporter, quantize_linear_params

    model, ranges, out = residual
    graph = prepare_for_quantization(model)
    output = graph.graph.output[0].name
    default = OnnxQdqExporter().export(graph, ranges, out / "float_out.onnx")
    full = OnnxQdqExporter().export(graph, ranges, out / "int8_out.onnx", output_layer="int8")
    assert output not in quantize_linear_params(onnx.load(str(default.path)))
    q = quantize_linear_params(onnx.load(str(full.path)))
    assert output in q and float(q[output][0]) == pytest.approx(ranges["tensors"][output]["scale"], rel=1e-6)
    with pytest.raises(GzsqError, match="unknown output layer"):
        OnnxQdqExporter().export(graph, ranges, out / "bad.onnx", output_layer="fp16")


def test_tflite_int8_io_matches_float_io(residual):
    from gzsq.exporters.tflite import export_tflite
    from gzsq.runtimes.litert_harness import LiteRtHarness

    model, ranges, out = residual
    export_tflite(prepare_for_quantization(model), ranges, out / "f.tflite", io_dtype="float")
    export_tflite(prepare_for_quantization(model), ranges, out / "i.tflite", io_dtype="int8")
    int8_rt = LiteRtHarness(out / "i.tflite")
    assert int8_rt.input["dtype"] == np.int8 and int8_rt.output["dtype"] == np.int8
    x = np.random.default_rng(1).standard_normal((6, 3, 12, 12)).astype(np.float32)
    entry = ranges["tensors"][model.onnx_model.graph.output[0].name]
    float_out, int8_out = LiteRtHarness(out / "f.tflite").run(x), int8_rt.run(x)
    inside = (float_out >= entry["min"]) & (float_out <= entry["max"])  # int8 I/O clips to the output range
    assert inside.mean() > 0.5
    # rounding to the output grid (½ step) plus the float vs int32 accumulation of the last layer
    np.testing.assert_allclose(int8_out[inside], float_out[inside], atol=entry["scale"] * 1.5)


def test_openvino_fake_quantize_limits_equal_ranges(residual):
    from gzsq.exporters.openvino_ir import export_openvino, fake_quantize_limits

    model, ranges, out = residual
    export_openvino(prepare_for_quantization(model), ranges, out / "m.xml")
    assert (out / "m.bin").is_file()
    limits = fake_quantize_limits(out / "m.xml")
    assert len(limits) >= 10
    grid = [((0 - t["zero_point"]) * t["scale"], (255 - t["zero_point"]) * t["scale"]) for t in ranges["tensors"].values()]
    for fq in limits:
        assert fq["levels"] == 256
        low, high = float(fq["output_low"].ravel()[0]), float(fq["output_high"].ravel()[0])
        assert any(abs(low - a) <= 1e-6 * max(1, abs(a)) and abs(high - b) <= 1e-6 * max(1, abs(b)) for a, b in grid), fq["name"]


def test_openvino_ir_leaves_fused_residual_sums_unrounded(residual):
    """OpenVINO fuses a residual Add into the convolution before it and skips the rounding of the
    conv output; the IR (and its simulation) carries no FakeQuantize there, and nowhere else less."""
    import onnx

    from gzsq.exporters.onnx_qdq import export_onnx_qdq, quantize_linear_params
    from gzsq.exporters.openvino_ir import export_openvino, fake_quantize_limits, openvino_qdq, sum_fused_requantizations

    model, ranges, out = residual
    graph = prepare_for_quantization(model)
    onnx_qdq = export_onnx_qdq(graph, ranges, out / "plain.onnx")
    fused = sum_fused_requantizations(onnx.load(str(onnx_qdq.path)), graph)
    producers = {o: n.op_type for n in graph.graph.node for o in n.output}
    assert len(fused) == 3 and all(producers[t] == "Conv" for t in fused)  # each block's last 1x1 conv
    ov_qdq, dropped = openvino_qdq(graph, ranges, out / "ov.onnx", "auto")
    assert dropped == fused
    assert set(quantize_linear_params(onnx.load(str(ov_qdq.path)))) == set(quantize_linear_params(onnx.load(str(onnx_qdq.path)))) - set(fused)
    assert "not requantized" in ov_qdq.scheme
    export_openvino_path = out / "fused.xml"
    export_openvino(graph, ranges, export_openvino_path)
    fq_tensors = {fq["name"].removesuffix("_DequantizeLinear") for fq in fake_quantize_limits(export_openvino_path)}
    assert fq_tensors.isdisjoint(fused) and len(fq_tensors & set(quantize_linear_params(onnx.load(str(ov_qdq.path))))) >= 10


@pytest.mark.parametrize("fmt,output_layer", [("tflite", None), ("tflite", "float"), ("openvino", None), ("openvino", "int8")])
def test_runtime_agrees_with_simulation_within_one_step(residual, fmt, output_layer):
    """Brevitas-style: the runtime's int8 kernels against the fake-quant simulation of the same file
    (the simulation reads the output-layer placement back from the artifact)."""
    from gzsq.plugins import get_exporter

    model, ranges, out = residual
    graph = prepare_for_quantization(model)
    exporter = get_exporter(fmt)
    result = exporter.export(graph, ranges, out / f"p_{output_layer}{exporter.suffix}", output_layer=output_layer)
    x = np.random.default_rng(2).standard_normal((32, 3, 12, 12)).astype(np.float32)
    entry = verify_artifact(fmt, result.path, graph, ranges, [EvalSet(x, None, "agreement", "noise")], threads=1)
    row = entry["evaluations"][0]
    assert row["output_error_steps_p99"] <= 1.0 + 1e-5
    assert row["output_error_steps_max"] <= 3.0 + 1e-5
    assert row["runtime_vs_simulation_agreement_pct"] >= 90


def test_run_three_formats_report_and_gate(tmp_path, tiny_onnx):
    rng = np.random.default_rng(0)
    eval_npz = tmp_path / "eval.npz"
    np.savez(eval_npz, images=rng.standard_normal((16, 1, 16, 16)).astype(np.float32), labels=rng.integers(0, 10, 16))
    out = tmp_path / "out"
    args = ["run", str(tiny_onnx), "--formats", "onnx,tflite,openvino", "--samples", "8", "--steps", "3",
            "--eval-data", str(eval_npz), "-o", str(out)]
    assert main(args + ["--max-drop", "100"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model_int8.onnx", "model_int8.tflite", "model_int8.xml", "model_int8.bin", "report.json", "report.md",
            "report.html"} <= names
    report = json.loads((out / "report.json").read_text())
    assert set(report["artifacts"]) == {"onnx", "tflite", "openvino"} and report["gate"]["passed"]
    # Each artifact's output placement is read back from the file: the per-format defaults.
    assert {f: e["output_layer"] for f, e in report["artifacts"].items()} == {"onnx": "float", "tflite": "int8", "openvino": "float"}
    for entry in report["artifacts"].values():
        assert entry["latency_batch1"]["int8_p50_ms"] > 0 and entry["size_bytes"] > 0
    html = (out / "report.html").read_text()
    for plot in ("accuracy", "latency", "ranges", "images"):
        assert f'id="plot-{plot}"' in html
    assert html.count("data:image/png;base64,") == 4
    # An impossible gate fails with its own exit code, and the report is still written.
    (out / "report.json").unlink()
    assert main(args + ["--max-drop", "-1"]) == 3
    report = json.loads((out / "report.json").read_text())
    assert report["gate"]["passed"] is False and len(report["gate"]["failures"]) == 3

    # int8 I/O is a TFLite option; asking it of another format is refused in one line.
    int8_io = tmp_path / "int8_io.tflite"
    assert main(["export", str(tiny_onnx), "--ranges", str(out / "ranges.json"), "--format", "tflite", "--io", "int8",
                 "-o", str(int8_io)]) == 0
    from gzsq.runtimes.litert_harness import LiteRtHarness
    assert LiteRtHarness(int8_io).input["dtype"] == np.int8
    assert main(["export", str(tiny_onnx), "--ranges", str(out / "ranges.json"), "--format", "onnx", "--io", "int8",
                 "-o", str(tmp_path / "x.onnx")]) == 2
    assert not (tmp_path / "x.onnx").exists()

    # gzsq verify on the artifacts just written: same checks, its own report directory.
    verify_out = tmp_path / "verify"
    assert main(["verify", str(tiny_onnx), str(out / "model_int8.tflite"), str(out / "model_int8.xml"),
                 "--eval-data", str(eval_npz), "-o", str(verify_out)]) == 0
    verified = json.loads((verify_out / "report.json").read_text())
    assert set(verified["artifacts"]) == {"tflite", "openvino"}
    assert "per-channel" in verified["artifacts"]["tflite"]["scheme"]


def test_verify_bad_inputs(tmp_path, tiny_onnx, capsys):
    bogus = tmp_path / "model.engine"
    bogus.write_bytes(b"xx")
    assert main(["verify", str(tiny_onnx), str(bogus), "-o", str(tmp_path / "v")]) == 2
    assert "unknown artifact format" in capsys.readouterr().err
    lonely = tmp_path / "lonely.xml"
    lonely.write_text("<net/>")
    assert main(["verify", str(tiny_onnx), str(lonely), "-o", str(tmp_path / "v")]) == 2
    assert "lonely.bin" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()
