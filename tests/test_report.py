"""report.html opens in a real browser (headless Chromium) and every plot decodes and renders."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from gzsq.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (.ci/run installs Debian's chromium)")
def test_html_report_renders_plots_in_headless_chromium(tmp_path, tiny_onnx):
    rng = np.random.default_rng(0)
    eval_npz = tmp_path / "eval.npz"
    np.savez(eval_npz, images=rng.standard_normal((8, 1, 16, 16)).astype(np.float32), labels=rng.integers(0, 10, 8))
    out = tmp_path / "out"
    assert main(["run", str(tiny_onnx), "--samples", "8", "--steps", "3", "--eval-data", str(eval_npz), "-o", str(out)]) == 0
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    rendered = dict(re.findall(r'alt="([^"]+)"[^>]*data-rendered="(\d+x\d+)"', dom))
    assert set(rendered) == {"Accuracy per format", "FP32 vs int8 latency per runtime", "Per-tensor activation ranges",
                             "Distilled calibration images"}, dom[:500]
    for size in rendered.values():
        width, height = map(int, size.split("x"))
        assert width > 100 and height > 50


def test_gate_names_the_output_layer_when_a_requantized_output_costs_accuracy():
    from gzsq.verify import apply_gate, output_layer_note

    def entry(output_layer, int8_top1):
        row = {"source": "val.npz", "metric": "top1", "fp32_top1_pct": 70.0, "int8_top1_pct": int8_top1}
        return {"output_layer": output_layer, "evaluations": [row]}

    assert output_layer_note(entry("float", 40.0)) is None      # not the output layer's doing
    assert output_layer_note(entry("int8", 69.5)) is None       # within the hint threshold
    assert "--output-layer float" in output_layer_note(entry("int8", 40.0))
    report = {"artifacts": {"tflite": entry("int8", 40.0), "onnx": entry("float", 69.0)}}
    apply_gate(report, 5.0)
    assert not report["gate"]["passed"] and len(report["gate"]["failures"]) == 1
    assert "tflite loses 30.00 pt top-1" in report["gate"]["failures"][0] and "--output-layer float" in report["gate"]["failures"][0]
