"""Bad input: one line naming the problem and the fix, a non-zero exit, nothing half-written."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from gzsq.cli import main
from tests.conftest import export_legacy, make_tiny


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip()


def assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("gzsq: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_file(capsys, tmp_path):
    code, err = run_cli(capsys, "distill", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "c.npz"))
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "c.npz").exists()


def test_truncated_onnx(capsys, tmp_path, tiny_onnx):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(tiny_onnx.read_bytes()[:200])
    code, err = run_cli(capsys, "run", str(bad), "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, "re-export")
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_not_onnx(capsys, tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_text("hello, I am not a model")
    code, err = run_cli(capsys, "distill", str(bad))
    assert_one_line_error(code, err, "re-export")


def test_unknown_format(capsys, tmp_path):
    p = tmp_path / "m.tflite"
    p.write_bytes(b"\0" * 16)
    code, err = run_cli(capsys, "distill", str(p))
    assert_one_line_error(code, err, "unknown model format")


def test_pickle_refused(capsys, tmp_path):
    import torch

    p = tmp_path / "m.pt"
    torch.save(make_tiny(), p)
    code, err = run_cli(capsys, "distill", str(p), "--input-shape", "1,16,16")
    assert_one_line_error(code, err, "--trust-pickle")


def _graph_with(weight: np.ndarray, dims=("N", 1, 8, 8), op_extra=None) -> onnx.ModelProto:
    inp = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(dims))
    out = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [dims[0], weight.shape[0], dims[2], dims[3]])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node(op_extra or "Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [inp], [out], [numpy_helper.from_array(weight.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_nan_weights(capsys, tmp_path):
    w = np.random.randn(4, 1, 3, 3)
    w[0, 0, 0, 0] = np.nan
    p = tmp_path / "nan.onnx"
    onnx.save(_graph_with(w), str(p))
    code, err = run_cli(capsys, "run", str(p), "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, "NaN/Inf")


def test_constant_weights(capsys, tmp_path):
    p = tmp_path / "const.onnx"
    onnx.save(_graph_with(np.full((4, 1, 3, 3), 0.5)), str(p))
    code, err = run_cli(capsys, "distill", str(p))
    assert_one_line_error(code, err, "all 0.5")


def test_dynamic_dims_need_input_shape(capsys, tmp_path):
    p = tmp_path / "dyn.onnx"
    onnx.save(_graph_with(np.random.randn(4, 1, 3, 3), dims=("N", 1, "H", "W")), str(p))
    code, err = run_cli(capsys, "distill", str(p))
    assert_one_line_error(code, err, "--input-shape")
    code, err = run_cli(capsys, "distill", str(p), "--input-shape", "1,8,8", "--method", "gaussian", "--samples", "4",
                        "-o", str(tmp_path / "c.npz"))
    assert code == 0 and (tmp_path / "c.npz").exists()


def test_unsupported_op(capsys, tmp_path):
    p = tmp_path / "op.onnx"
    onnx.save(_graph_with(np.random.randn(4, 1, 3, 3), op_extra="LpNormalization"), str(p))
    code, err = run_cli(capsys, "distill", str(p), "-o", str(tmp_path / "c.npz"), "--steps", "2")
    assert_one_line_error(code, err, "unsupported op", "LpNormalization")
    assert not (tmp_path / "c.npz").exists()


def test_calibration_for_other_model(capsys, tmp_path, tiny_onnx):
    other = tmp_path / "other.onnx"
    export_legacy(make_tiny(bn=False, seed=1), other)
    cal = tmp_path / "c.npz"
    assert main(["distill", str(other), "--method", "gaussian", "--samples", "4", "-o", str(cal)]) == 0
    capsys.readouterr()
    code, err = run_cli(capsys, "calibrate", str(tiny_onnx), "--data", str(cal), "-o", str(tmp_path / "r.json"))
    assert_one_line_error(code, err, "not tiny", "gzsq distill")
    assert not (tmp_path / "r.json").exists()


def test_unwritable_output(capsys, tmp_path, tiny_onnx):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a directory cannot be created under a file, even by root
    code, err = run_cli(capsys, "run", str(tiny_onnx), "-o", str(blocker / "out"))
    assert_one_line_error(code, err, "writable")


def test_bad_input_range(capsys, tiny_onnx):
    code, err = run_cli(capsys, "distill", str(tiny_onnx), "--input-range", "1,0")
    assert_one_line_error(code, err, "--input-range")


def test_real_without_data(capsys, tiny_onnx):
    code, err = run_cli(capsys, "distill", str(tiny_onnx), "--method", "real")
    assert_one_line_error(code, err, "--real-data")


def test_zeroq_without_bn(capsys, tmp_path, tiny_onnx):
    code, err = run_cli(capsys, "distill", str(tiny_onnx), "--method", "zeroq", "-o", str(tmp_path / "c.npz"))
    assert_one_line_error(code, err, "no BatchNorm", "--method gzsq")
    assert not (tmp_path / "c.npz").exists()


def test_int8_io_with_float_output_layer(capsys, tmp_path, tiny_onnx):
    ranges = tmp_path / "r.json"
    assert main(["distill", str(tiny_onnx), "--method", "gaussian", "--samples", "4", "-o", str(tmp_path / "c.npz")]) == 0
    assert main(["calibrate", str(tiny_onnx), "--data", str(tmp_path / "c.npz"), "-o", str(ranges)]) == 0
    capsys.readouterr()
    out = tmp_path / "m.tflite"
    code, err = run_cli(capsys, "export", str(tiny_onnx), "--ranges", str(ranges), "--format", "tflite", "--io", "int8",
                        "--output-layer", "float", "-o", str(out))
    assert_one_line_error(code, err, "int8 I/O needs an int8 output layer", "--io float")
    assert not out.exists()


def test_failed_run_leaves_no_new_directory(capsys, tmp_path, tiny_onnx):
    out = tmp_path / "new" / "deeper"
    code, err = run_cli(capsys, "run", str(tiny_onnx), "--formats", "onnx,nosuch", "-o", str(out))
    assert_one_line_error(code, err, "no exporter for format 'nosuch'")
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "kept"
    existing.mkdir()
    code, err = run_cli(capsys, "run", str(tiny_onnx), "--formats", "nosuch", "-o", str(existing))
    assert code == 2 and existing.is_dir()  # a directory the user made is never removed
