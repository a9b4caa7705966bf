"""Models in: ONNX (incl. opset-18 reductions, Clip/HardSwish/PReLU), .pt2, nn.Module, zoo."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from gzsq.errors import GzsqError
from gzsq.models import load_model
from tests.conftest import make_tiny


def _torch_vs_ort(model, batch=3):
    x = np.random.default_rng(0).standard_normal((batch, *model.input_shape)).astype(np.float32)
    ref = ort.InferenceSession(model.onnx_bytes).run(None, {model.input_name: x})[0]
    with torch.no_grad():
        out = model.torch_module()(torch.from_numpy(x)).numpy()
    return np.abs(ref - out).max()


def test_onnx_with_clip_hardswish_prelu(tiny_onnx):
    model = load_model(str(tiny_onnx))
    ops = {n.op_type for n in model.onnx_model.graph.node}
    assert {"Clip", "HardSwish", "PRelu"} <= ops
    assert _torch_vs_ort(model) < 1e-4


def test_opset18_reduce_mean_and_leaky_relu(tmp_path):
    w = numpy_helper.from_array(np.random.randn(4, 2, 3, 3).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("LeakyRelu", ["c"], ["r"], alpha=0.1),
             helper.make_node("ReduceMean", ["r", "axes"], ["y"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])], [w, axes])
    path = tmp_path / "r18.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    assert _torch_vs_ort(load_model(str(path))) < 1e-4


def test_pt2_and_module(tmp_path):
    net = make_tiny(bn=True)
    program = torch.export.export(net, (torch.randn(2, 1, 16, 16),))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    from_pt2 = load_model(str(tmp_path / "m.pt2"))
    assert from_pt2.input_shape == (1, 16, 16)
    assert "BatchNormalization" in {n.op_type for n in from_pt2.onnx_model.graph.node}  # BN kept for zeroq
    assert _torch_vs_ort(from_pt2, batch=from_pt2.batch_dim_fixed or 3) < 1e-4
    from gzsq.config import DistillConfig, InputDomain
    from gzsq.distill import distill

    cal = distill(from_pt2, DistillConfig(samples=5, batch_size=5, max_steps=2), InputDomain(), progress=False)
    assert cal.images.shape == (5, 1, 16, 16)
    from_module = load_model(net, input_shape=(1, 16, 16))
    x = torch.randn(2, 1, 16, 16)
    ref = net(x).detach().numpy()
    got = ort.InferenceSession(from_module.onnx_bytes).run(None, {from_module.input_name: x.numpy()})[0]
    assert np.abs(ref - got).max() < 1e-4


def test_pickle_needs_trust(tmp_path):
    torch.save(make_tiny(), tmp_path / "m.pt")
    with pytest.raises(GzsqError, match="--trust-pickle"):
        load_model(str(tmp_path / "m.pt"), (1, 16, 16))
    model = load_model(str(tmp_path / "m.pt"), (1, 16, 16), trust_pickle=True)
    assert model.input_shape == (1, 16, 16)


def test_input_shape_contradiction(tiny_onnx):
    with pytest.raises(GzsqError, match="contradicts"):
        load_model(str(tiny_onnx), (1, 20, 20))


def test_zoo_models_load_and_convert():
    from gzsq.zoo import ZOO

    for name in ["fmnist_resnet_bn", "fmnist_resnet_bn_folded", "fmnist_mobilenet_v2"]:
        model = load_model(f"zoo:{name}")
        assert model.input_shape == ZOO[name].input_shape
        has_bn = "BatchNormalization" in {n.op_type for n in model.onnx_model.graph.node}
        assert has_bn == ZOO[name].has_bn
        assert _torch_vs_ort(model) < 1e-3
