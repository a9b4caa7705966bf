"""Device suites share the project's fixtures (tests/conftest.py, loaded under another name)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("gzsq_test_fixtures", Path(__file__).resolve().parent.parent / "tests" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
tiny_onnx = _fixtures.tiny_onnx
export_legacy, make_tiny = _fixtures.export_legacy, _fixtures.make_tiny
