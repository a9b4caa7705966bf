"""Arm Ethos-U through Vela: zoo int8 TFLite models compile for the NPU, the report shows NPU/CPU
placement, SRAM and cycles, and `gzsq check` catches artifacts that break the target's rules."""
from __future__ import annotations

import json
import shutil

import pytest

from gzsq.cli import main

pytestmark = pytest.mark.vela
pytest.importorskip("ethosu.vela", reason="pip install ethos-u-vela==5.2.0")


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vela")
    assert main(["run", "zoo:fmnist_mobilenet_v2", "--formats", "tflite", "--eval-limit", "200", "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize("target", ["ethos-u55", "ethos-u65"])
def test_zoo_tflite_compiles_fully_on_the_npu(zoo_run, tmp_path, target):
    artifact = tmp_path / "npu.tflite"
    assert main(["export", "zoo:fmnist_mobilenet_v2", "--ranges", str(zoo_run / "ranges.json"), "--target", target,
                 "-o", str(artifact)]) == 0
    report = tmp_path / "check.json"
    assert main(["check", str(artifact), "--target", target, "--fail-on-fallback", "-o", str(report)]) == 0
    result = json.loads(report.read_text())
    vela = result["vela"]
    assert result["violations"] == []
    assert vela["cpu_operators"] == 0 and vela["cpu_fallback"] == [] and vela["npu_operators"] > 10
    assert vela["cycles_total"] > 0 and vela["sram_kib"] > 0


def test_float_io_artifact_is_caught(zoo_run, tmp_path, capsys):
    """gzsq run's default TFLite has float I/O: QUANTIZE/DEQUANTIZE run on the CPU of an Ethos-U."""
    report = tmp_path / "check.json"
    assert main(["check", str(zoo_run / "model_int8.tflite"), "--target", "ethos-u55", "-o", str(report)]) == 3
    result = json.loads(report.read_text())
    assert any("I/O is float" in v for v in result["violations"])
    assert any("compute in float" in v for v in result["violations"])
    assert result["vela"]["cpu_operators"] >= 1
    assert {op["op"] for op in result["vela"]["cpu_fallback"]} >= {"QUANTIZE", "DEQUANTIZE"}
    assert "breaks" in capsys.readouterr().err


def test_vela_missing_is_one_line(zoo_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    assert main(["check", str(zoo_run / "model_int8.tflite"), "--target", "ethos-u55"]) == 2
    assert "pip install ethos-u-vela" in capsys.readouterr().err
