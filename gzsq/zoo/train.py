"""Deterministic training of the Fashion-MNIST zoo models.

    python -m gzsq.zoo.train            # all models
    python -m gzsq.zoo.train --only fmnist_vgg_nobn

Writes gzsq/zoo/weights/NAME.pt (state_dict, loadable with weights_only=True) and NAME.json
(seed, epochs, test metric). Same seed + same thread count → same weights on this CPU build.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gzsq.datasets import denoising_pair, load_fashion_mnist, normalize_fashion_mnist
from gzsq.evaluate import psnr
from gzsq.zoo import architectures as arch

WEIGHTS_DIR = Path(__file__).parent / "weights"
DENOISE_SIGMA = 0.1


@dataclass(frozen=True)
class TrainSpec:
    name: str
    epochs: int
    lr: float
    task: str = "classification"
    batch_size: int = 128
    weight_decay: float = 5e-4
    seed: int = 0


SPECS = {
    "fmnist_resnet_bn": TrainSpec("fmnist_resnet_bn", epochs=5, lr=2e-3),
    "fmnist_resnet_fixup": TrainSpec("fmnist_resnet_fixup", epochs=12, lr=3e-3, weight_decay=1e-4),
    "fmnist_vgg_nobn": TrainSpec("fmnist_vgg_nobn", epochs=5, lr=1e-3),
    "fmnist_mobilenet_v2": TrainSpec("fmnist_mobilenet_v2", epochs=6, lr=2e-3),
    "fmnist_dncnn": TrainSpec("fmnist_dncnn", epochs=2, lr=1e-3, task="denoising", weight_decay=0.0),
}

BUILDERS = {
    "fmnist_resnet_bn": lambda: arch.ResNetBN(),
    "fmnist_resnet_fixup": lambda: arch.FixupResNet(),
    "fmnist_vgg_nobn": lambda: arch.PlainVGG(),
    "fmnist_mobilenet_v2": lambda: arch.small_mobilenet_v2(),
    "fmnist_dncnn": lambda: arch.DnCNN(),
}


def evaluate(model: nn.Module, spec: TrainSpec) -> float:
    images, labels = load_fashion_mnist("test")
    model.eval()
    with torch.no_grad():
        if spec.task == "classification":
            x = torch.from_numpy(normalize_fashion_mnist(images))
            preds = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
            return float((preds.numpy() == labels).mean() * 100)
        noisy, clean = denoising_pair(images[:2000], DENOISE_SIGMA, seed=1234)
        out = model(torch.from_numpy(noisy)).numpy()
        return psnr(out, clean)


def train(spec: TrainSpec) -> dict:
    torch.manual_seed(spec.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    images, labels = load_fashion_mnist("train")
    model = BUILDERS[spec.name]()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = len(images) // spec.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch)
    gen = np.random.default_rng(spec.seed)
    start = time.time()
    for epoch in range(spec.epochs):
        model.train()
        order = gen.permutation(len(images))
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * spec.batch_size:(step + 1) * spec.batch_size]
            batch = images[idx]
            if spec.task == "classification":
                # Light augmentation: random horizontal flip (clothes are left/right symmetric).
                flip = gen.random(len(batch)) < 0.5
                batch = np.where(flip[:, None, None], batch[:, :, ::-1], batch)
                x = torch.from_numpy(normalize_fashion_mnist(batch))
                loss = nn.functional.cross_entropy(model(x), torch.from_numpy(labels[idx]))
            else:
                noisy, clean = denoising_pair(batch, DENOISE_SIGMA, seed=int(gen.integers(1 << 31)))
                loss = nn.functional.mse_loss(model(torch.from_numpy(noisy)), torch.from_numpy(clean))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        print(f"{spec.name} epoch {epoch + 1}/{spec.epochs} loss {total / steps_per_epoch:.4f} ({time.time() - start:.0f}s)", flush=True)
    metric = evaluate(model, spec)
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), WEIGHTS_DIR / f"{spec.name}.pt")
    meta = {**asdict(spec), "test_metric": metric,
            "metric": "top1_percent" if spec.task == "classification" else "psnr_db",
            "train_seconds": round(time.time() - start, 1), "torch": torch.__version__}
    (WEIGHTS_DIR / f"{spec.name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{spec.name}: test {meta['metric']} = {metric:.2f}", flush=True)
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(SPECS), help="train just these models")
    args = parser.parse_args()
    for name in args.only or list(SPECS):
        train(SPECS[name])


if __name__ == "__main__":
    main()
