"""Distillation: determinism, loss reduction, domain bounds, batching, fixed-batch graphs."""
from __future__ import annotations

import numpy as np
import pytest

from gzsq.config import DistillConfig, InputDomain
from gzsq.distill import CalibrationSet, distill
from gzsq.models import load_model
from tests.conftest import export_legacy, make_tiny


@pytest.fixture(scope="module")
def bn_model():
    from gzsq.models import from_torch_module

    return from_torch_module(make_tiny(bn=True), (1, 16, 16), "tiny_bn")


def test_same_seed_same_file(tmp_path, tiny_onnx):
    model = load_model(str(tiny_onnx))
    config = DistillConfig(method="gzsq", samples=6, batch_size=4, max_steps=8)
    a = distill(model, config, InputDomain(), progress=False).save(tmp_path / "a.npz")
    b = distill(model, config, InputDomain(), progress=False).save(tmp_path / "b.npz")
    ca, cb = CalibrationSet.load(a), CalibrationSet.load(b)
    assert np.array_equal(ca.images, cb.images)
    c = distill(model, DistillConfig(method="gzsq", samples=6, batch_size=4, max_steps=8, seed=1), InputDomain(), progress=False)
    assert not np.array_equal(ca.images, c.images)
    assert ca.metadata()["seed"] == 0 and ca.model_sha256 == model.sha256


@pytest.mark.parametrize("method", ["gzsq", "zeroq"])
def test_optimisation_lowers_the_loss(bn_model, method):
    short = distill(bn_model, DistillConfig(method=method, samples=4, batch_size=4, max_steps=1), InputDomain(), progress=False)
    longer = distill(bn_model, DistillConfig(method=method, samples=4, batch_size=4, max_steps=60, patience=60),
                     InputDomain(), progress=False)
    assert longer.history[0] < short.history[0] * 0.9


def test_images_respect_domain_and_shape(tiny_onnx):
    model = load_model(str(tiny_onnx))
    domain = InputDomain(0.0, 1.0)
    for method in ("gzsq", "gaussian", "uniform"):
        cal = distill(model, DistillConfig(method=method, samples=10, batch_size=4, max_steps=5), domain, progress=False)
        assert cal.images.shape == (10, 1, 16, 16)
        assert cal.images.min() >= 0.0 and cal.images.max() <= 1.0
        assert len(cal.calibration_images) + len(cal.holdout_images) == 10 and cal.holdout >= 1


def test_fixed_batch_graph_distils(tmp_path):
    path = tmp_path / "fixed.onnx"
    export_legacy(make_tiny(bn=False), path, dynamic_batch=False)
    model = load_model(str(path))
    assert model.batch_dim_fixed == 1
    cal = distill(model, DistillConfig(method="gzsq", samples=3, batch_size=3, max_steps=3), InputDomain(), progress=False)
    assert cal.images.shape == (3, 1, 16, 16) and np.isfinite(cal.images).all()


def test_real_images_from_npz_and_folder(tmp_path, tiny_onnx):
    from PIL import Image

    model = load_model(str(tiny_onnx))
    np.savez(tmp_path / "r.npz", images=np.random.rand(5, 16, 16, 1).astype(np.float32))  # NHWC is accepted
    cal = distill(model, DistillConfig(method="real", samples=4, real_data=str(tmp_path / "r.npz")), InputDomain(), progress=False)
    assert cal.images.shape == (4, 1, 16, 16)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((np.random.rand(20, 30) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    domain = InputDomain(0.0, 1.0, (0.5,), (0.25,))
    cal = distill(model, DistillConfig(method="real", samples=3, real_data=str(folder)), domain, progress=False)
    assert cal.images.shape == (3, 1, 16, 16)
    assert cal.images.min() >= -2.0 - 1e-6 and cal.images.max() <= 2.0 + 1e-6
