"""ranges.json ↔ QDQ ONNX: exact scales, runtime vs simulation within one step, saturation-safe weights."""
from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from gzsq.config import CalibrationConfig, DistillConfig, InputDomain
from gzsq.distill import distill
from gzsq.exporters.onnx_qdq import export_onnx_qdq, quantize_linear_params
from gzsq.models import load_model
from gzsq.ranges import build_ranges, load_ranges, prepare_for_quantization, save_ranges
from gzsq.runtimes.onnxruntime_harness import OnnxRuntimeHarness


@pytest.fixture(scope="module")
def calibrated(tiny_onnx, tmp_path_factory):
    model = load_model(str(tiny_onnx))
    cal = distill(model, DistillConfig(method="gzsq", samples=24, batch_size=12, max_steps=20), InputDomain(), progress=False)
    ranges = build_ranges(model, cal, CalibrationConfig(), progress=False)
    out = tmp_path_factory.mktemp("export")
    save_ranges(ranges, out / "ranges.json")
    return model, cal, ranges, out


def test_ranges_file_schema(calibrated):
    model, _, ranges, out = calibrated
    payload = load_ranges(out / "ranges.json", model)
    assert payload["version"] == 1 and payload["model_sha256"] == model.sha256
    assert {"method", "seed", "estimator", "samples"} <= set(payload["calibration"])
    for name, t in payload["tensors"].items():
        assert {"min", "max", "scale", "zero_point", "dtype"} <= set(t)
        assert t["min"] <= 0.0 <= t["max"]
        assert abs(t["scale"] * 255 - (t["max"] - t["min"])) < 1e-5 * max(1.0, t["max"] - t["min"])
        assert 0 <= t["zero_point"] <= 255
    assert payload["weights"] and all(w["dtype"] == "int8" and w["granularity"] == "per_channel" for w in payload["weights"].values())


def test_every_quantize_linear_scale_matches_ranges(calibrated):
    model, _, ranges, out = calibrated
    result = export_onnx_qdq(prepare_for_quantization(model), ranges, out / "m.onnx")
    params = quantize_linear_params(onnx.load(str(result.path)))
    assert len(params) >= 5
    for name, (scale, zero_point) in params.items():
        assert name in ranges["tensors"], name
        assert np.float32(scale) == np.float32(ranges["tensors"][name]["scale"]), name
        assert int(zero_point) == ranges["tensors"][name]["zero_point"], name
    meta = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert meta["gzsq.model_sha256"] == model.sha256 and meta["gzsq.weight_bits"] in ("7", "8")


def test_runtime_agrees_with_simulation_within_one_step(calibrated):
    model, cal, ranges, out = calibrated
    result = export_onnx_qdq(prepare_for_quantization(model), ranges, out / "m2.onnx")
    images = np.concatenate([cal.images, np.random.default_rng(0).standard_normal((40, *model.input_shape)).astype(np.float32)])
    runtime = OnnxRuntimeHarness(result.path).run(images)
    simulated = OnnxRuntimeHarness(result.path, simulate=True).run(images)
    step = ranges["tensors"]["output"]["scale"]
    assert np.abs(runtime - simulated).max() <= step * 1.001


def test_seven_bit_weights_for_avx2_target(calibrated):
    model, _, ranges, out = calibrated
    result = export_onnx_qdq(prepare_for_quantization(model), ranges, out / "avx2.onnx", target="x86-avx2")
    q = onnx.load(str(result.path))
    weights = [numpy_helper.to_array(i) for i in q.graph.initializer if i.data_type == onnx.TensorProto.INT8 and i.dims and len(i.dims) > 1]
    assert weights and all(w.min() >= -64 and w.max() <= 64 for w in weights)  # |q| ≤ 64: 2·255·64 < 2^15
    assert "7 bits" in result.scheme
    full = export_onnx_qdq(prepare_for_quantization(model), ranges, out / "vnni.onnx", target="x86-vnni")
    wq = [numpy_helper.to_array(i) for i in onnx.load(str(full.path)).graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
    assert max(int(np.abs(w).max()) for w in wq) == 127


@pytest.mark.parametrize("estimator", ["percentile", "mse", "entropy"])
def test_estimators_clip_inside_minmax(calibrated, estimator):
    model, cal, ranges, _ = calibrated
    other = build_ranges(model, cal, CalibrationConfig(estimator=estimator), progress=False)
    tighter = 0
    for name, t in other["tensors"].items():
        ref = ranges["tensors"][name]
        assert t["max"] <= ref["max"] + 1e-6 and t["min"] >= ref["min"] - 1e-6
        tighter += t["max"] < ref["max"] - 1e-6
    assert tighter > 0


def test_input_range_comes_from_domain(tiny_onnx):
    model = load_model(str(tiny_onnx))
    domain = InputDomain(0.0, 1.0, (0.5,), (0.25,))
    cal = distill(model, DistillConfig(method="gaussian", samples=8), domain, progress=False)
    ranges = build_ranges(model, cal, CalibrationConfig(), progress=False)
    assert ranges["tensors"]["input"]["min"] == pytest.approx(-2.0) and ranges["tensors"]["input"]["max"] == pytest.approx(2.0)
    assert ranges["tensors"]["input"]["source"] == "input domain"


def test_fake_quant_simulation_matches_qdq_at_8_bits(calibrated):
    from gzsq.simulate import fake_quant_model

    model, cal, ranges, out = calibrated
    result = export_onnx_qdq(prepare_for_quantization(model), ranges, out / "sim.onnx", target="x86-vnni")
    images = cal.images
    qdq = OnnxRuntimeHarness(result.path, simulate=True).run(images)
    graph = prepare_for_quantization(model)
    w8a8 = OnnxRuntimeHarness(fake_quant_model(graph, ranges, result.quantized_tensors, 8, 8).SerializeToString()).run(images)
    w4a8 = OnnxRuntimeHarness(fake_quant_model(graph, ranges, result.quantized_tensors, 4, 8).SerializeToString()).run(images)
    step = ranges["tensors"]["output"]["scale"]
    # Same grid for weights and activations; only ORT's int32 bias rounding differs.
    assert np.abs(w8a8 - qdq).max() <= 3 * step
    assert np.abs(w4a8 - qdq).mean() > np.abs(w8a8 - qdq).mean()


def test_model_output_is_not_requantized_unless_asked(calibrated, tmp_path):
    """The last layer's result leaves the QDQ model in float (no QuantizeLinear on the graph
    output); float_outputs=False restores the fully requantized output on the ranges.json grid."""
    model, _, ranges, _ = calibrated
    graph = prepare_for_quantization(model)
    out_name = graph.graph.output[0].name
    for float_outputs, expect_dq in ((True, False), (False, True)):
        path = tmp_path / f"m_{float_outputs}.onnx"
        export_onnx_qdq(graph, ranges, path, "x86-vnni", float_outputs=float_outputs)
        qdq = onnx.load(str(path))
        producer = next(n for n in qdq.graph.node if out_name in n.output)
        assert (producer.op_type == "DequantizeLinear") == expect_dq
        x = np.random.default_rng(0).standard_normal((8, 1, 16, 16)).astype(np.float32)
        assert OnnxRuntimeHarness(path).run(x).shape == (8, 10)
