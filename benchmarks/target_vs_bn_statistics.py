"""Diagnostic: how far each target rule's per-channel σ is from the truth, on BN models (after a BN,
the real per-channel std is |γ|). Prints the median ratio target σ / |γ| per depth quartile.

    python benchmarks/target_vs_bn_statistics.py [zoo names...]
"""
import sys

import numpy as np
import torch

from gzsq.config import EsaRule
from gzsq.models import load_model
from gzsq.statistics import StatisticsEstimator


def main() -> None:
    names = sys.argv[1:] or ["mobilenet_v2", "fmnist_resnet_bn", "fmnist_mobilenet_v2"]
    for name in names:
        model = load_model(f"zoo:{name}")
        gm = model.torch_module()
        modules = dict(gm.named_modules())
        shape = model.input_shape
        if min(shape[1:]) >= 160:  # as distillation does by default
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        mu0, s0 = model.domain.prior(shape[0])
        for rule in ("moments", "paper"):
            layers = StatisticsEstimator(gm, rule, EsaRule(), 0.5).hooked_layers(torch.zeros(2, *shape), mu0, s0)
            ratios = np.array([float((layer.target_sigma / (modules[layer.module_name].weight.detach().abs() + 1e-6)).median())
                               for layer in layers if hasattr(modules[layer.module_name], "running_var")])
            q = max(len(ratios) // 4, 1)
            quartiles = [f"{np.median(ratios[i * q:(i + 1) * q]):.2f}" for i in range(4)]
            print(f"{name:<22} {rule:<8} target σ / real σ by depth quartile: {quartiles}", flush=True)


if __name__ == "__main__":
    main()
