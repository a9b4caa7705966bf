"""Real data the project can read offline: Fashion-MNIST (Debian `dataset-fashion-mnist`) and a
few hundred ImageNet-style natural-image crops (foolbox's labelled images, skimage photos)."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from gzsq.errors import GzsqError

FASHION_MNIST_DIR = Path(os.environ.get("GZSQ_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
# Per-pixel statistics of the Fashion-MNIST training set (pixels in [0, 1]).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N,28,28], labels int64 [N]) for split 'train' or 'test'."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists():
        raise GzsqError(f"Fashion-MNIST not found at {FASHION_MNIST_DIR}; install it with "
                        "`apt-get install dataset-fashion-mnist` (or set GZSQ_FASHION_MNIST_DIR)")
    return _read_idx(images), _read_idx(labels).astype(np.int64)


def normalize_fashion_mnist(images_u8: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] → float32 [N,1,28,28], normalised with the training-set mean/std."""
    x = images_u8.astype(np.float32)[:, None] / 255.0
    return (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD


def denoising_pair(images_u8: np.ndarray, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) float32 [N,1,28,28] in raw pixel units ([0,1] plus Gaussian noise)."""
    clean = images_u8.astype(np.float32)[:, None] / 255.0
    rng = np.random.default_rng(seed)
    noisy = clean + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    return noisy, clean


def center_crop_resize(img, width: int, height: int | None = None):
    """Largest centred square of a PIL image, resized (bilinear) to width × height."""
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return img.resize((width, height or width), Image.BILINEAR)


def installed_package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it (the data-only packages are
    installed --no-deps and their __init__ may not import)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def natural_image_crops(size: int = 224, crops_per_image: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ImageNet-normalised NCHW crops of natural photos: foolbox's 20 labelled ImageNet images and
    the colour photos in skimage.data, each cut into several random crops (scale 0.35–1) plus the
    centre crop. Returns (images float32, foolbox label or -1)."""
    from PIL import Image

    sources: list[tuple[Image.Image, int]] = []
    foolbox_dir = installed_package_dir("foolbox")
    if foolbox_dir is not None:
        for p in sorted((foolbox_dir / "data").glob("imagenet_*.jpg")):
            sources.append((Image.open(p).convert("RGB"), int(p.stem.split("_")[-1])))
    try:
        import skimage.data as sd

        for name in ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field", "immunohistochemistry"]:
            try:
                arr = getattr(sd, name)()
            except Exception:  # some skimage images need pooch downloads; skip those
                continue
            if arr.ndim == 3 and arr.shape[2] >= 3:
                sources.append((Image.fromarray(arr[..., :3].astype(np.uint8)), -1))
    except ImportError:
        pass
    if not sources:
        raise GzsqError("no natural images available; install `foolbox==3.3.4 --no-deps` and scikit-image")
    rng = np.random.default_rng(seed)
    out, labels = [], []
    for img, label in sources:
        w, h = img.size
        crops = [center_crop_resize(img, size)]
        for _ in range(crops_per_image - 1):
            side = int(min(w, h) * rng.uniform(0.35, 1.0))
            x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = img.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crops.append(crop)
        for crop in crops:
            arr = np.asarray(crop, dtype=np.float32) / 255.0
            arr = (arr - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
            out.append(arr.transpose(2, 0, 1))
            labels.append(label)
    return np.stack(out).astype(np.float32), np.array(labels, np.int64)
