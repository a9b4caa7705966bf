"""Typed, frozen configuration objects. Every run records these (with its seed) in its outputs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from gzsq.errors import GzsqError

DistillMethod = Literal["gzsq", "zeroq", "gaussian", "uniform", "real"]
StatisticsRule = Literal["paper", "moments"]
RangeEstimator = Literal["minmax", "percentile", "mse", "entropy"]
# Where the model's output is left: "float" = the last layer's inputs and weights are int8, its
# result is not requantized (NNCF/AIMET placement); "int8" = requantized too (full integer).
OutputLayer = Literal["float", "int8"]
OUTPUT_LAYERS: tuple[str, ...] = ("float", "int8")


def check_output_layer(value: str | None) -> None:
    if value is not None and value not in OUTPUT_LAYERS:
        raise GzsqError(f"unknown output layer placement {value!r}; use float or int8")
METHODS: tuple[str, ...] = ("gzsq", "zeroq", "gaussian", "uniform", "real")
ESTIMATORS: tuple[str, ...] = ("minmax", "percentile", "mse", "entropy")
# Normalised images (no known preprocessing) rarely leave ±3 std; distilled pixels are kept inside.
UNKNOWN_NORMALISED_BOUND = 3.0


@dataclass(frozen=True)
class InputDomain:
    """What the model's input holds: model_input = (pixel - mean) / std, pixel in [low, high].

    Default (low/high None, mean 0, std 1): normalised images of unknown preprocessing, prior
    N(0, 1) per channel, bounded at ±3 for distillation. With a pixel range (e.g. [0, 1]) the input
    quantizer range is known exactly and distilled pixels are kept inside it.
    """

    low: float | None = None
    high: float | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if (self.low is None) != (self.high is None):
            raise GzsqError("input range needs both bounds; pass --input-range LO,HI")
        if self.low is not None and not self.low < self.high:
            raise GzsqError(f"input range {self.low},{self.high} is empty; pass --input-range LO,HI with LO < HI")
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise GzsqError("--mean and --std need the same number of values (one per channel, or one for all)")
        if any(s <= 0 for s in self.std):
            raise GzsqError("--std values must be positive")

    @property
    def is_bounded(self) -> bool:
        return self.low is not None

    @property
    def is_normalised(self) -> bool:
        return any(m != 0.0 for m in self.mean) or any(s != 1.0 for s in self.std)

    def _per_channel(self, values: tuple[float, ...], channels: int) -> np.ndarray:
        if len(values) == 1:
            return np.full(channels, values[0], np.float32)
        if len(values) != channels:
            raise GzsqError(f"input domain gives {len(values)} mean/std values but the model takes {channels} channels; "
                            "pass one value per channel")
        return np.asarray(values, np.float32)

    def bounds(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel [lo, hi] of the model input (±3 for unknown normalised inputs)."""
        if not self.is_bounded:
            b = np.full(channels, UNKNOWN_NORMALISED_BOUND, np.float32)
            return -b, b
        mean, std = self._per_channel(self.mean, channels), self._per_channel(self.std, channels)
        return (self.low - mean) / std, (self.high - mean) / std

    def prior(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mu, sigma) of the model input that distillation pulls towards."""
        if self.is_bounded and not self.is_normalised:
            # Raw pixel range: centre of the range, a quarter of its width as std (a natural
            # image's pixels spread over most of the range but rarely sit at the ends).
            return (np.full(channels, (self.low + self.high) / 2, np.float32),
                    np.full(channels, (self.high - self.low) / 4, np.float32))
        return np.zeros(channels, np.float32), np.ones(channels, np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InputDomain":
        return cls(low=d.get("low"), high=d.get("high"), mean=tuple(d.get("mean", (0.0,))), std=tuple(d.get("std", (1.0,))))


@dataclass(frozen=True)
class EsaRule:
    """Empirical statistics adjustment (paper §ESA): how missing channel statistics are filled when
    a layer has more (expansion) or fewer (contraction) channels than the one before. Each entry
    names an aggregate of the previous layer's per-channel values: min, mean, max, mean+min,
    mean-min, max+mean, max-mean."""

    expansion_mu: str = "mean"
    expansion_sigma: str = "mean"
    contraction_mu: str = "mean"
    contraction_sigma: str = "mean+min"  # the paper's best for MobileNetV2 contraction layers


@dataclass(frozen=True)
class DistillConfig:
    method: DistillMethod = "gzsq"
    samples: int = 32
    batch_size: int = 16
    max_steps: int = 60
    learning_rate: float = 0.2
    patience: int = 15          # steps without a 1 % improvement of the best loss before stopping
    min_rel_improvement: float = 0.01
    seed: int = 0
    statistics: StatisticsRule = "moments"  # wins on the zoo benchmark; "paper" kept selectable
    esa: EsaRule = field(default_factory=EsaRule)
    distill_size: int | None = None   # None: auto (half size for inputs ≥ 160 px); 0: the model's size
    spatial_correlation: float = 0.5  # 'moments' rule only: correlation of inputs inside a kernel window
    # Classifiers (2-D output): add cross-entropy towards a random class per image, so distilled
    # images produce confident logits as real images do (DeepInversion/GDFQ-style label prior).
    class_prior_weight: float = 0.0
    real_data: str | None = None
    holdout_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise GzsqError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.samples < 2:
            raise GzsqError("--samples must be at least 2 (one to calibrate, one held back)")
        if self.batch_size < 1 or self.max_steps < 0:
            raise GzsqError("--batch-size must be ≥ 1 and --steps ≥ 0")
        if self.method == "real" and not self.real_data:
            raise GzsqError("--method real needs --real-data PATH (a folder of images or an .npz with 'images')")
        if self.statistics not in ("paper", "moments"):
            raise GzsqError(f"unknown statistics rule {self.statistics!r}; choose paper or moments")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CalibrationConfig:
    estimator: RangeEstimator = "minmax"
    percentile: float = 99.99
    histogram_bins: int = 2048
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise GzsqError(f"unknown estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}")

    def to_dict(self) -> dict:
        return asdict(self)
