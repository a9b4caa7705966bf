"""Shared fixtures: small models built here (random or briefly trained), written to ONNX."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from torch import nn

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", category=FutureWarning)


class TinyNet(nn.Module):
    """Conv-BN-ReLU6 / HardSwish / PReLU mix: the activation types the converter must handle."""

    def __init__(self, bn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.act1 = nn.ReLU6()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.act2 = nn.Hardswish()
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.act3 = nn.PReLU(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.conv2(x))
        x = x + self.act3(self.conv3(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def make_tiny(bn: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyNet(bn)
    if bn:  # non-trivial running statistics, as a trained net has
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model.eval()


def export_legacy(model: nn.Module, path, shape=(1, 1, 16, 16), dynamic_batch: bool = True, opset: int = 17) -> None:
    kwargs = {"dynamic_axes": {"input": {0: "batch"}}} if dynamic_batch else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*shape),), str(path), dynamo=False, input_names=["input"],
                          output_names=["output"], opset_version=opset, **kwargs)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    export_legacy(make_tiny(bn=False), path)
    return path


@pytest.fixture(scope="session")
def trained_fmnist_onnx(tmp_path_factory):
    """A BN-free net trained here for a short while on Fashion-MNIST, exported to ONNX with the
    legacy exporter: a model gzsq has never seen, handed over as a file only."""
    from gzsq.datasets import load_fashion_mnist, normalize_fashion_mnist

    torch.manual_seed(0)
    torch.set_num_threads(2)
    images, labels = load_fashion_mnist("train")
    x = torch.from_numpy(normalize_fashion_mnist(images[:20000]))
    y = torch.from_numpy(labels[:20000])
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64 * 7 * 7, 10))
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for epoch in range(2):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = perm[i:i + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    path = tmp_path_factory.mktemp("fresh") / "fresh_fmnist.onnx"
    export_legacy(model, path, shape=(1, 1, 28, 28))
    test_images, test_labels = load_fashion_mnist("test")
    eval_path = path.parent / "eval.npz"
    np.savez(eval_path, images=normalize_fashion_mnist(test_images[:3000]), labels=test_labels[:3000])
    return path, eval_path
