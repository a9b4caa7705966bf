"""Calibration data without data: distillation (gzsq, zeroq), noise references, and real images.

Choices the GZSQ paper leaves open, made here (benchmarks/ measures them):
* hooked tensors: every Conv/Gemm output, after the BatchNorm that directly follows it (so BN
  present or folded gives the same targets); zeroq hooks each BN's input tensor, found through
  the graph edge, with the BN's running mean/std as target;
* statistics are per batch (mean/std over batch and spatial positions per channel), compared
  with the population-level targets; the input prior term is per channel too;
* optimiser Adam on the pixels, lr 0.2, at most 60 steps per batch of 16, stopping when the
  loss has not improved by 1 % for 15 steps; pixels are kept inside the input domain's bounds
  (±3 for normalised inputs of unknown preprocessing) after every step;
* images are initialised from the input prior; each batch is seeded by (seed, batch index), so
  the same seed gives byte-identical files for the same thread count.
Memory is bounded by the batch size: batches are distilled one after another.
"""
from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gzsq.config import DistillConfig, InputDomain
from gzsq.datasets import center_crop_resize
from gzsq.errors import GzsqError
from gzsq.fileio import atomic_path
from gzsq.models import LoadedModel
from gzsq.statistics import HookedLayer, StatisticsEstimator, bn_targets

EPS = 1e-6  # the paper's s in L_Z
FORMAT_VERSION = 1


@dataclass
class CalibrationSet:
    images: np.ndarray                    # [N, C, H, W] float32, model-input units
    method: str
    seed: int
    model_sha256: str
    input_shape: tuple[int, ...]
    domain: InputDomain
    holdout: int                          # the last `holdout` images are held back from calibration
    layout: str = "NCHW"
    config: dict = field(default_factory=dict)
    history: list[float] = field(default_factory=list)   # final loss per batch
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def calibration_images(self) -> np.ndarray:
        return self.images[: len(self.images) - self.holdout]

    @property
    def holdout_images(self) -> np.ndarray:
        return self.images[len(self.images) - self.holdout:]

    def metadata(self) -> dict:
        return {"version": FORMAT_VERSION, "method": self.method, "seed": self.seed, "model_sha256": self.model_sha256,
                "input_shape": list(self.input_shape), "layout": self.layout, "domain": self.domain.to_dict(),
                "holdout": self.holdout, "config": self.config, "loss_per_batch": self.history,
                "seconds": round(self.seconds, 2), "peak_rss_mb": round(self.peak_rss_mb, 1)}

    def save(self, path: str | Path) -> Path:
        import json

        meta = json.dumps(self.metadata(), sort_keys=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, images=self.images.astype(np.float32), metadata=np.array(meta))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationSet":
        import json

        try:
            with np.load(path, allow_pickle=False) as data:
                images = data["images"]
                meta = json.loads(str(data["metadata"]))
        except FileNotFoundError:
            raise GzsqError(f"calibration file {path} does not exist; create it with `gzsq distill`") from None
        except Exception:
            raise GzsqError(f"{path} is not a gzsq calibration file; create it with `gzsq distill`") from None
        return cls(images=images, method=meta["method"], seed=meta["seed"], model_sha256=meta["model_sha256"],
                   input_shape=tuple(meta["input_shape"]), domain=InputDomain.from_dict(meta["domain"]),
                   holdout=meta["holdout"], layout=meta.get("layout", "NCHW"), config=meta.get("config", {}),
                   history=meta.get("loss_per_batch", []), seconds=meta.get("seconds", 0.0),
                   peak_rss_mb=meta.get("peak_rss_mb", 0.0))

    def check_model(self, model: LoadedModel) -> None:
        if self.model_sha256 != model.sha256:
            raise GzsqError(f"calibration file was made for model {self.model_sha256[:12]}…, not {model.name} "
                            f"({model.sha256[:12]}…); run `gzsq distill` on this model")


def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, unlike ru_maxrss, is not inherited across exec (spawned
    benchmark children would otherwise report their parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def z_score_loss(mu: torch.Tensor, sigma: torch.Tensor, mu_t: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """The paper's absolute z-score distance L_Z, averaged over channels."""
    return (torch.abs(mu - mu_t) / torch.sqrt((sigma + EPS) ** 2 + (sigma_t + EPS) ** 2)).mean()


def l2_loss(mu: torch.Tensor, sigma: torch.Tensor, mu_t: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """ZeroQ's statistic-matching loss (squared differences of means and stds)."""
    return ((mu - mu_t) ** 2).mean() + ((sigma - sigma_t) ** 2).mean()


def _channel_moments(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [0] + list(range(2, t.dim()))
    mu = t.mean(dims)
    sigma = torch.sqrt(((t - mu.reshape(1, -1, *([1] * (t.dim() - 2)))) ** 2).mean(dims) + 1e-12)
    return mu, sigma


class _Hooks:
    def __init__(self, gm: nn.Module, layers: list[HookedLayer]) -> None:
        modules = dict(gm.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        for layer in layers:
            self.handles.append(modules[layer.module_name].register_forward_hook(self._make(layer.node_name)))

    def _make(self, key: str):
        def hook(_module, _inputs, output):
            self.outputs[key] = output

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _initial_batch(gen: torch.Generator, n: int, shape: tuple[int, ...], domain: InputDomain, kind: str) -> torch.Tensor:
    channels = shape[0]
    lo, hi = (torch.from_numpy(b).reshape(1, channels, *([1] * (len(shape) - 1))) for b in domain.bounds(channels))
    mu, sigma = (torch.from_numpy(p).reshape(1, channels, *([1] * (len(shape) - 1))) for p in domain.prior(channels))
    if kind == "uniform":
        if domain.is_bounded:
            return lo + (hi - lo) * torch.rand((n, *shape), generator=gen)
        return mu + sigma * math.sqrt(3.0) * (2 * torch.rand((n, *shape), generator=gen) - 1)
    x = mu + sigma * torch.randn((n, *shape), generator=gen)
    return torch.maximum(torch.minimum(x, hi), lo)


def load_real_images(path: str, model: LoadedModel, domain: InputDomain) -> np.ndarray:
    """A folder of images (resized, scaled to the domain's pixel range, normalised) or an .npz
    whose 'images' array is already in model-input units (NCHW or NHWC)."""
    p = Path(path)
    shape = model.input_shape
    if p.suffix == ".npz" and p.is_file():
        with np.load(p, allow_pickle=False) as data:
            if "images" not in data:
                raise GzsqError(f"{path} has no 'images' array; save the images with np.savez(path, images=...)")
            images = data["images"].astype(np.float32)
        if images.ndim == len(shape) + 1 and images.shape[1:] != shape and images.shape[-1] == shape[0]:
            images = np.moveaxis(images, -1, 1)
        if images.shape[1:] != shape:
            raise GzsqError(f"{path}: images have shape {images.shape[1:]}, the model takes {shape}; resize them or "
                            "pass a folder of image files")
        return images
    if not p.is_dir():
        raise GzsqError(f"real data {path} is neither a folder of images nor an .npz file")
    from PIL import Image

    files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"))
    if not files:
        raise GzsqError(f"no image files (.png/.jpg/.jpeg/.bmp) in {path}")
    channels, height, width = shape
    low, high = (domain.low, domain.high) if domain.is_bounded else (0.0, 1.0)
    mean = np.asarray(domain.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(domain.std, np.float32).reshape(-1, 1, 1)
    out = []
    for f in files:
        img = Image.open(f).convert("L" if channels == 1 else "RGB")
        arr = np.asarray(center_crop_resize(img, width, height), np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        out.append(((low + arr * (high - low)) - mean) / std)
    return np.stack(out).astype(np.float32)


def distill(model: LoadedModel, config: DistillConfig, domain: InputDomain, progress: bool = True) -> CalibrationSet:
    """Produce `config.samples` calibration images for `model` with `config.method`."""
    start = time.time()
    torch.manual_seed(config.seed)
    shape = model.input_shape
    holdout = max(1, int(round(config.samples * config.holdout_fraction)))
    gen = torch.Generator().manual_seed(config.seed)
    history: list[float] = []
    if config.method == "real":
        images = load_real_images(config.real_data, model, domain)
        rng = np.random.default_rng(config.seed)
        images = images[rng.permutation(len(images))[: config.samples]]
        holdout = max(1, int(round(len(images) * config.holdout_fraction))) if len(images) > 1 else 0
    elif config.method in ("gaussian", "uniform"):
        images = _initial_batch(gen, config.samples, shape, domain, config.method).numpy()
    else:
        images, history = _optimise(model, config, domain, progress)
    return CalibrationSet(images=np.ascontiguousarray(images, dtype=np.float32), method=config.method, seed=config.seed,
                          model_sha256=model.sha256, input_shape=shape, domain=domain, holdout=holdout,
                          config=config.to_dict(), history=history, seconds=time.time() - start,
                          peak_rss_mb=_peak_rss_mb())


def _targets(model: LoadedModel, config: DistillConfig, domain: InputDomain, gm, example) -> tuple[list[HookedLayer], object]:
    if config.method == "zeroq":
        layers = bn_targets(gm)
        if not layers:
            raise GzsqError(f"{model.name} has no BatchNorm layers (absent or folded), so zeroq has no statistics to match; "
                            "use --method gzsq, which needs only the weights")
        return layers, l2_loss
    mu, sigma = domain.prior(shape_channels(model))
    estimator = StatisticsEstimator(gm, config.statistics, config.esa, config.spatial_correlation)
    return estimator.hooked_layers(example, mu, sigma), z_score_loss


def shape_channels(model: LoadedModel) -> int:
    return model.input_shape[0]


def _optimise(model: LoadedModel, config: DistillConfig, domain: InputDomain, progress: bool) -> tuple[np.ndarray, list[float]]:
    from tqdm import tqdm

    gm = model.torch_module()
    shape = model.input_shape
    distill_shape = _distill_shape(gm, shape, config.distill_size)
    # A graph with a fixed batch runs in micro-batches of that size; statistics are pooled over them.
    micro = model.batch_dim_fixed or config.batch_size
    example = torch.zeros((micro, *distill_shape))
    try:
        with torch.no_grad():
            gm(example)
    except Exception:
        micro = 1  # batch baked into a reshape: single-image passes
        example = torch.zeros((1, *distill_shape))
    layers, loss_fn = _targets(model, config, domain, gm, example)
    channels = shape[0]
    prior_mu, prior_sigma = (torch.from_numpy(p) for p in domain.prior(channels))
    lo, hi = (torch.from_numpy(b).reshape(1, channels, *([1] * (len(shape) - 1))) for b in domain.bounds(channels))
    hooks = _Hooks(gm, layers)
    batches, history = [], []
    n_batches = math.ceil(config.samples / config.batch_size)
    try:
        for b in range(n_batches):
            n = min(config.batch_size, config.samples - b * config.batch_size)
            gen = torch.Generator().manual_seed(config.seed * 100_003 + b)
            x = _initial_batch(gen, n, distill_shape, domain, "gaussian").requires_grad_(True)
            labels = torch.randint(0, 1 << 30, (n,), generator=gen)  # reduced modulo the class count
            opt = torch.optim.Adam([x], lr=config.learning_rate)
            best, best_step, value = math.inf, 0, math.nan
            bar = tqdm(range(config.max_steps), desc=f"{config.method} batch {b + 1}/{n_batches}", leave=False,
                       disable=not progress or None, unit="step")
            for step in bar:
                opt.zero_grad()
                loss, logits = _batch_loss(gm, hooks, layers, loss_fn, x, micro, prior_mu, prior_sigma)
                if config.class_prior_weight > 0 and logits is not None and logits.dim() == 2 and logits.shape[1] > 1:
                    loss = loss + config.class_prior_weight * nn.functional.cross_entropy(logits, labels % logits.shape[1])
                loss.backward()
                opt.step()
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, hi), lo))
                value = float(loss.detach())
                bar.set_postfix(loss=f"{value:.4f}")
                if value < best * (1 - config.min_rel_improvement):
                    best, best_step = value, step
                elif step - best_step >= config.patience:
                    break
            history.append(round(value, 6) if math.isfinite(value) else None)
            bar.close()
            batches.append(x.detach())
    finally:
        hooks.close()
    images = torch.cat(batches)
    if distill_shape != shape:
        images = nn.functional.interpolate(images, size=shape[1:], mode="bilinear", align_corners=False)
        images = torch.maximum(torch.minimum(images, hi), lo)
    return images.numpy(), history


AUTO_HALF_RESOLUTION_FROM = 160  # inputs at least this large are distilled at half size by default


def _distill_shape(gm, shape: tuple[int, ...], distill_size: int | None) -> tuple[int, ...]:
    """Spatial size to optimise at. None = auto: half size for inputs ≥ 160 px when the graph
    accepts it (per-channel statistics of a CNN barely depend on resolution, and the cost of a
    step falls 4×); 0 = the model's own size."""
    if len(shape) != 3 or distill_size == 0:
        return shape
    explicit = distill_size is not None
    if not explicit:
        if min(shape[1:]) < AUTO_HALF_RESOLUTION_FROM:
            return shape
        distill_size = min(shape[1:]) // 2
    candidate = (shape[0], distill_size, distill_size)
    try:
        with torch.no_grad():
            gm(torch.zeros((1, *candidate)))
    except Exception:
        if explicit:
            raise GzsqError(f"the model does not run at {distill_size}px; drop --distill-size") from None
        return shape
    return candidate


def _batch_loss(gm, hooks: _Hooks, layers, loss_fn, x, micro, prior_mu, prior_sigma) -> torch.Tensor:
    logits = None
    if micro >= len(x):
        logits = gm(x)
        outputs = {k: _channel_moments(v) for k, v in hooks.outputs.items()}
    else:  # fixed-batch graphs: pool per-channel sums over micro-batch passes
        sums: dict[str, list[torch.Tensor]] = {}
        for i in range(0, len(x), micro):
            chunk = x[i:i + micro]
            if len(chunk) < micro:  # pad the last chunk by repeating; padded rows are not counted
                chunk = torch.cat([chunk, chunk[-1:].expand(micro - len(chunk), *chunk.shape[1:])])
            gm(chunk)
            keep = min(micro, len(x) - i)
            for k, v in hooks.outputs.items():
                v = v[:keep]
                dims = [0] + list(range(2, v.dim()))
                s1, s2, cnt = v.sum(dims), (v ** 2).sum(dims), v.numel() / v.shape[1]
                prev = sums.get(k)
                sums[k] = [s1, s2, cnt] if prev is None else [prev[0] + s1, prev[1] + s2, prev[2] + cnt]
        outputs = {}
        for k, (s1, s2, cnt) in sums.items():
            mu = s1 / cnt
            outputs[k] = (mu, torch.sqrt((s2 / cnt - mu ** 2).clamp_min(0) + 1e-12))
    loss = loss_fn(*_channel_moments(x), prior_mu, prior_sigma)
    for layer in layers:
        mu, sigma = outputs[layer.node_name]
        loss = loss + loss_fn(mu, sigma, layer.target_mu, layer.target_sigma)
    return loss, (logits if isinstance(logits, torch.Tensor) else None)
