"""Metrics on model outputs (numpy), shared by the pipeline, the benchmark and the tests."""
from __future__ import annotations

import math

import numpy as np


def top1(outputs: np.ndarray) -> np.ndarray:
    return outputs.reshape(len(outputs), -1).argmax(1)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float((top1(outputs) == labels).mean() * 100)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((top1(a) == top1(b)).mean() * 100)


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Output signal-to-quantization-noise ratio in dB (SQNR)."""
    noise = float(np.mean((reference.astype(np.float64) - test) ** 2))
    signal = float(np.mean(reference.astype(np.float64) ** 2))
    return 10 * math.log10(max(signal, 1e-30) / max(noise, 1e-30))


def psnr(pred: np.ndarray, target: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.clip(pred, 0, peak) - target) ** 2))
    return 10 * math.log10(peak * peak / max(mse, 1e-12))


def eval_dataset(dataset: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(inputs, labels or clean targets, metric) of a zoo dataset."""
    from gzsq import datasets

    if dataset == "fashion_mnist":
        images, labels = datasets.load_fashion_mnist("test")
        images, labels = images[:limit], labels[:limit]
        return datasets.normalize_fashion_mnist(images), labels, "top1"
    if dataset == "fashion_mnist_denoise":
        from gzsq.zoo.train import DENOISE_SIGMA

        images, _ = datasets.load_fashion_mnist("test")
        noisy, clean = datasets.denoising_pair(images[: limit or 2000], DENOISE_SIGMA, seed=1234)
        return noisy, clean, "psnr"
    if dataset == "imagenet_crops":
        crops, labels = datasets.natural_image_crops()
        return crops[:limit], labels[:limit], "agreement"
    raise ValueError(dataset)


def cosine(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean per-sample cosine similarity of flattened outputs."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = test.reshape(len(test), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-30)))
