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
