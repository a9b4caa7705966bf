"""Target profiles: `gzsq check` lists every rule an artifact breaks, and `gzsq export --target`
emits what the target takes."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from gzsq.cli import main
from gzsq.profiles import PROFILES


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_onnx):
    out = tmp_path_factory.mktemp("profiles")
    assert main(["run", str(tiny_onnx), "--samples", "8", "--steps", "3", "-o", str(out)]) == 0
    return out


def test_profiles_cover_the_targets():
    assert {"generic-cpu", "ethos-u55", "ethos-u65", "openvino-npu", "qualcomm-htp", "edge-tpu"} <= set(PROFILES)


def test_clean_qdq_passes_htp_and_generic(exported, capsys):
    assert main(["check", str(exported / "model_int8.onnx"), "--target", "qualcomm-htp"]) == 0
    assert main(["check", str(exported / "model_int8.onnx"), "--target", "generic-cpu"]) == 0


def test_per_channel_activation_and_wrong_format_are_caught(exported, tmp_path, capsys):
    model = onnx.load(str(exported / "model_int8.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
    scale = numpy_helper.to_array(inits[q.input[1]])
    inits[q.input[1]].CopyFrom(numpy_helper.from_array(np.repeat(scale.reshape(1), 4).astype(np.float32), q.input[1]))
    bad = tmp_path / "per_channel_act.onnx"
    onnx.save(model, str(bad))
    assert main(["check", str(bad), "--target", "qualcomm-htp"]) == 3
    out = capsys.readouterr().out
    assert f"activation {q.input[0]!r} is quantized per channel" in out
    assert main(["check", str(exported / "model_int8.onnx"), "--target", "edge-tpu"]) == 3
    assert "is not consumed by edge-tpu" in capsys.readouterr().out


def test_export_for_a_profile_picks_format_and_io(exported, tmp_path, tiny_onnx):
    artifact = tmp_path / "edge.tflite"
    assert main(["export", str(tiny_onnx), "--ranges", str(exported / "ranges.json"), "--target", "edge-tpu",
                 "-o", str(artifact)]) == 0
    from gzsq.runtimes.litert_harness import LiteRtHarness

    assert LiteRtHarness(artifact).input["dtype"] == np.int8
    assert main(["export", str(tiny_onnx), "--ranges", str(exported / "ranges.json"), "--target", "edge-tpu",
                 "--format", "onnx", "-o", str(tmp_path / "x.onnx")]) == 2


def test_unknown_target_is_refused(exported, capsys):
    with pytest.raises(SystemExit):
        main(["check", str(exported / "model_int8.onnx"), "--target", "tpu-v9"])
