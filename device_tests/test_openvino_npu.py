"""OpenVINO NPU: the IR runs there when OpenVINO lists an NPU, and agrees with the CPU run;
otherwise the suite skips and says why."""
from __future__ import annotations

import numpy as np
import pytest

from gzsq.cli import main
from gzsq.runtimes.openvino_harness import OpenVinoHarness, available_devices

DEVICES = available_devices()


@pytest.mark.skipif("NPU" not in DEVICES, reason=f"OpenVINO lists no NPU on this machine (available: {', '.join(DEVICES) or 'none'})")
def test_zoo_ir_on_npu_agrees_with_cpu(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "zoo:fmnist_resnet_bn", "--formats", "openvino", "--eval-limit", "200", "-o", str(out)]) == 0
    images = np.load(out / "calibration.npz")["images"]
    cpu = OpenVinoHarness(out / "model_int8.xml").run(images)
    npu = OpenVinoHarness(out / "model_int8.xml", device="NPU", precision="f16").run(images)
    assert (cpu.argmax(1) == npu.argmax(1)).mean() >= 0.95


def test_missing_device_is_one_line(tmp_path, tiny_onnx):
    from gzsq.errors import GzsqError

    with pytest.raises(GzsqError, match="not available here"):
        OpenVinoHarness(str(tiny_onnx), device="NOSUCHDEVICE")
