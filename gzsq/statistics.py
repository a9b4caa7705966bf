"""Statistics estimation: substitute per-channel activation statistics from the weights alone.

Backend-neutral: it walks the fx graph that gzsq converts from the ONNX model, so any exporter's
naming is irrelevant here. Two rules, selectable and compared in benchmarks/:

* ``paper`` — GZSQ (Sharma et al. 2021): from an N(0,1) (or the user's prior) input,
  mu_{n+1}[c] = mu_W[c] + mu_n[c] (+ b[c]),  sigma_{n+1}[c] = sqrt(sigma_W[c]^2 + sigma_n[c]^2),
  with mu_W/sigma_W the mean/std of output channel c's (BN-folded) weights, channels of layer n
  paired index by index, and the empirical statistics adjustment (ESA) where channel counts
  change. Activation functions and pools pass statistics through (the paper's recursion is linear).
* ``moments`` — moment propagation: a convolution's output mean is the fan-in weighted sum of its
  input means, its variance sum_i v_i[(1-rho)·Σw² + rho·(Σw)²] (inputs correlated by rho inside a
  kernel window, as neighbouring pixels of natural images are); elementwise activations (ReLU,
  ReLU6, HardSwish, PReLU, anything channelwise) by quadrature over N(mu, sigma²).

Both return, for every hooked layer (conv/linear output, after its BN when one follows directly),
the target per-channel (mu, sigma). Hooks sit on pre-activation tensors, which is where the
paper's recursion is defined.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from gzsq.config import EsaRule
from gzsq.errors import GzsqError

ELEMENTWISE_TYPES = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.PReLU, nn.LeakyReLU, nn.Sigmoid, nn.SiLU,
                     nn.Tanh, nn.GELU, nn.ELU, nn.SELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout)
# Expectations under N(mu, sigma²) on a dense z-grid with normalised Gaussian weights: robust for
# kinked activations (ReLU, ReLU6, HardSwish), where Gauss–Hermite converges slowly.
_GRID_Z = np.linspace(-8.0, 8.0, 2049)
_GRID_W = np.exp(-_GRID_Z ** 2 / 2) / np.exp(-_GRID_Z ** 2 / 2).sum()


@dataclass
class ChannelStats:
    mu: torch.Tensor   # [C]
    var: torch.Tensor  # [C]

    @property
    def sigma(self) -> torch.Tensor:
        return self.var.clamp_min(0).sqrt()


@dataclass
class HookedLayer:
    """A tensor whose statistics distillation matches: the output of `module_name`."""

    node_name: str
    module_name: str
    target_mu: torch.Tensor
    target_sigma: torch.Tensor
    channel_dim: int = 1


def conv_bn_pairs(gm: torch.fx.GraphModule) -> dict[str, str]:
    """conv/linear node name → BN node name, for a BN that is the sole user of the conv's output."""
    modules = dict(gm.named_modules())
    pairs = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], (nn.Conv2d, nn.Linear)) and len(node.users) == 1:
            user = next(iter(node.users))
            if user.op == "call_module" and isinstance(modules[user.target], nn.modules.batchnorm._BatchNorm):
                pairs[node.name] = user.name
    return pairs


def fused_weight_bias(conv: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    if bn is None:
        return weight, bias
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(std)
    factor = gamma / std
    weight = weight * factor.reshape(-1, *([1] * (weight.dim() - 1)))
    return weight, (bias - bn.running_mean.double()) * factor + beta


def _aggregate(values: torch.Tensor, rule: str) -> torch.Tensor:
    mean, vmin, vmax = values.mean(), values.min(), values.max()
    table = {"min": vmin, "mean": mean, "max": vmax, "mean+min": mean + vmin, "mean-min": mean - vmin,
             "max+mean": vmax + mean, "max-mean": vmax - mean}
    if rule not in table:
        raise GzsqError(f"unknown ESA aggregate {rule!r}; choose one of {', '.join(table)}")
    return table[rule]


def esa_pair(stats: ChannelStats, channels: int, esa: EsaRule) -> tuple[torch.Tensor, torch.Tensor]:
    """Previous layer's (mu, sigma) paired with `channels` output channels (paper's ESA)."""
    mu, sigma = stats.mu, stats.sigma
    have = mu.numel()
    if have == channels:
        return mu, sigma
    if have > channels:  # contraction: every channel gets the aggregate
        return (_aggregate(mu, esa.contraction_mu).expand(channels).clone(),
                _aggregate(sigma, esa.contraction_sigma).expand(channels).clone())
    extra = channels - have
    return (torch.cat([mu, _aggregate(mu, esa.expansion_mu).expand(extra)]),
            torch.cat([sigma, _aggregate(sigma, esa.expansion_sigma).expand(extra)]))


def _quadrature(fn, stats: ChannelStats, ndim: int) -> ChannelStats:
    """E[f(X)], Var[f(X)] per channel for X ~ N(mu, sigma²), f channelwise elementwise."""
    t = torch.tensor(_GRID_Z, dtype=torch.float64)
    w = torch.tensor(_GRID_W, dtype=torch.float64)
    points = stats.mu[None, :] + stats.sigma[None, :] * t[:, None]  # [Q, C]
    shape = (points.shape[0], points.shape[1]) + (1,) * (ndim - 2)
    with torch.no_grad():
        values = fn(points.float().reshape(shape)).double().reshape(points.shape)
    mean = (w[:, None] * values).sum(0)
    second = (w[:, None] * values ** 2).sum(0)
    return ChannelStats(mean, (second - mean ** 2).clamp_min(0))


def _max_of_k_normals(k: int) -> tuple[float, float]:
    """Mean and variance of the max of k iid N(0,1) (fixed-seed Monte Carlo, cached)."""
    if k not in _MAX_CACHE:
        samples = np.random.default_rng(0).standard_normal((200_000, k)).max(1)
        _MAX_CACHE[k] = (float(samples.mean()), float(samples.var()))
    return _MAX_CACHE[k]


_MAX_CACHE: dict[int, tuple[float, float]] = {}


class StatisticsEstimator:
    """Propagates per-channel statistics through the fx graph of a converted ONNX model."""

    def __init__(self, gm: torch.fx.GraphModule, rule: str = "paper", esa: EsaRule = EsaRule(),
                 spatial_correlation: float = 0.5) -> None:
        if rule not in ("paper", "moments"):
            raise GzsqError(f"unknown statistics rule {rule!r}; choose paper or moments")
        self.gm, self.rule, self.esa, self.rho = gm, rule, esa, spatial_correlation
        self.modules = dict(gm.named_modules())
        self.approximated: list[str] = []  # nodes handled by the generic fallback, for the report

    def hooked_layers(self, example: torch.Tensor, input_mu: np.ndarray, input_sigma: np.ndarray) -> list[HookedLayer]:
        ShapeProp(self.gm).propagate(example)
        pairs = conv_bn_pairs(self.gm)
        stats: dict[str, ChannelStats | None] = {}
        layers: list[HookedLayer] = []
        fused_bn_nodes = set(pairs.values())
        nodes = {n.name: n for n in self.gm.graph.nodes}
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                stats[node.name] = ChannelStats(torch.tensor(input_mu, dtype=torch.float64),
                                                torch.tensor(input_sigma, dtype=torch.float64) ** 2)
                continue
            if node.name in fused_bn_nodes:
                continue  # computed together with its conv
            if node.op != "call_module":
                stats[node.name] = self._passthrough(node, stats)
                continue
            module = self.modules[node.target]
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                bn_name = pairs.get(node.name)
                bn = self.modules[nodes[bn_name].target] if bn_name else None
                out = self._linear_layer(node, module, bn, stats)
                out_node = nodes[bn_name] if bn_name else node
                stats[out_node.name] = out
                if bn_name:
                    stats[node.name] = None
                if out is not None and torch.all(torch.isfinite(out.mu)) and torch.all(torch.isfinite(out.var)):
                    layers.append(HookedLayer(out_node.name, out_node.target, out.mu.float(), out.sigma.float()))
                continue
            stats[node.name] = self._other_module(node, module, stats)
        if not layers:
            raise GzsqError("the model has no Conv or Gemm/MatMul layers with constant weights; gzsq quantizes CNNs")
        return layers

    # --- handlers -------------------------------------------------------------------------------
    def _input_stats(self, node, stats) -> list[ChannelStats | None]:
        return [stats.get(a.name) for a in node.args if isinstance(a, torch.fx.Node)]

    @staticmethod
    def _shape(node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def _linear_layer(self, node, module, bn, stats) -> ChannelStats | None:
        src = self._input_stats(node, stats)[0]
        if src is None:
            return None
        weight, bias = fused_weight_bias(module, bn)
        cout = weight.shape[0]
        if self.rule == "paper":
            flat = weight.reshape(cout, -1)
            mu_w, sigma_w = flat.mean(1), flat.std(1, unbiased=False)
            mu_in, sigma_in = esa_pair(src, cout, self.esa)
            return ChannelStats(mu_w + mu_in + bias, sigma_w ** 2 + sigma_in ** 2)
        # moments: fan-in weighted sums with per-input-channel statistics
        if isinstance(module, nn.Linear):
            s1, s2, rho, groups = weight, weight ** 2, 0.0, 1
        else:
            s1, s2, rho, groups = weight.sum((2, 3)), (weight ** 2).sum((2, 3)), self.rho, module.groups
        cin = s1.shape[1] * groups
        mu_in, var_in = src.mu, src.var
        if mu_in.numel() != cin:
            mu_in = mu_in.mean().expand(cin)
            var_in = var_in.mean().expand(cin)
        mu_g = mu_in.reshape(groups, -1)
        var_g = var_in.reshape(groups, -1)
        out_per_group = cout // groups
        s1g = s1.reshape(groups, out_per_group, -1)
        s2g = s2.reshape(groups, out_per_group, -1)
        mean = torch.einsum("goi,gi->go", s1g, mu_g).reshape(cout) + bias
        var = torch.einsum("goi,gi->go", (1 - rho) * s2g + rho * s1g ** 2, var_g).reshape(cout)
        return ChannelStats(mean, var)

    def _other_module(self, node, module, stats) -> ChannelStats | None:
        inputs = self._input_stats(node, stats)
        tensor_inputs = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if not tensor_inputs:
            return None
        src = inputs[0]
        in_shape, out_shape = self._shape(tensor_inputs[0]), self._shape(node)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and src is not None:
            std = torch.sqrt(module.running_var.double() + module.eps)
            gamma = module.weight.detach().double() / std
            return ChannelStats(gamma * (src.mu - module.running_mean.double()) + module.bias.detach().double(), gamma ** 2 * src.var)
        if isinstance(module, ELEMENTWISE_TYPES) and src is not None and len(tensor_inputs) == 1:
            if self.rule == "paper" or isinstance(module, (nn.Identity, nn.Dropout)):
                return src
            return _quadrature(module, src, len(in_shape) if in_shape else 4)
        kind = type(module).__name__
        if kind == "OnnxBinaryMathOperation":
            return self._binary(node, module, stats)
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)) and src is not None:
            if self.rule == "paper":
                return src
            k = module.kernel_size if isinstance(module.kernel_size, int) else int(np.prod(module.kernel_size))
            k = k * k if isinstance(module.kernel_size, int) else k
            if isinstance(module, nn.AvgPool2d):
                return ChannelStats(src.mu, src.var * (self.rho + (1 - self.rho) / k))
            e_max, v_max = _max_of_k_normals(k)
            spread = math.sqrt(1 - self.rho)
            return ChannelStats(src.mu + src.sigma * spread * e_max, src.var * (self.rho + (1 - self.rho) * v_max))
        if kind in ("OnnxGlobalAveragePoolWithKnownInputShape", "OnnxGlobalAveragePool", "AdaptiveAvgPool2d", "_StaticReduce") and src is not None:
            if out_shape and in_shape and len(out_shape) >= 2 and out_shape[1] == in_shape[1]:
                if self.rule == "paper":
                    return src
                area = int(np.prod(in_shape[2:])) if len(in_shape) > 2 else 1
                return ChannelStats(src.mu, src.var * (self.rho + (1 - self.rho) / max(area, 1)))
        if kind == "OnnxConcat" and all(s is not None for s in inputs) and getattr(module, "axis", 1) in (1, -3):
            return ChannelStats(torch.cat([s.mu for s in inputs]), torch.cat([s.var for s in inputs]))
        return self._reshape_like(node, src, in_shape, out_shape)

    def _reshape_like(self, node, src, in_shape, out_shape) -> ChannelStats | None:
        if src is None or out_shape is None or len(out_shape) < 2:
            return None
        channels = out_shape[1]
        if channels == src.mu.numel():
            return src
        if in_shape is not None and len(in_shape) == 4 and len(out_shape) == 2 and channels == int(np.prod(in_shape[1:])):
            area = in_shape[2] * in_shape[3]  # flatten NCHW → features, channel-major
            return ChannelStats(src.mu.repeat_interleave(area), src.var.repeat_interleave(area))
        self.approximated.append(node.name)
        return ChannelStats(src.mu.mean().expand(channels).clone(), src.var.mean().expand(channels).clone())

    def _constant_of(self, arg, channels: int) -> torch.Tensor | None:
        if isinstance(arg, (int, float)):
            return torch.full((channels,), float(arg), dtype=torch.float64)
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
            value = self.gm
            for part in arg.target.split("."):
                value = getattr(value, part)
            value = value.detach().double()
            if value.numel() == 1:
                return value.reshape(1).expand(channels)
            squeezed = value.reshape(-1)
            if squeezed.numel() == channels:
                return squeezed
            return value.mean().expand(channels)
        return None

    def _binary(self, node, module, stats) -> ChannelStats | None:
        op = getattr(module, "math_op_function", None)
        name = getattr(op, "__name__", str(op))
        a, b = node.args[0], node.args[1]
        sa = stats.get(a.name) if isinstance(a, torch.fx.Node) else None
        sb = stats.get(b.name) if isinstance(b, torch.fx.Node) else None
        if sa is not None and sb is not None:
            if sa.mu.numel() != sb.mu.numel():
                return sa if sa.mu.numel() >= sb.mu.numel() else sb
            if name in ("add", "sub"):
                sign = 1.0 if name == "add" else -1.0
                return ChannelStats(sa.mu + sign * sb.mu, sa.var + sb.var)
            if name == "mul":
                return ChannelStats(sa.mu * sb.mu, sa.var * sb.var + sa.var * sb.mu ** 2 + sb.var * sa.mu ** 2)
            return sa
        src, const_arg = (sa, b) if sa is not None else (sb, a)
        if src is None:
            return None
        const = self._constant_of(const_arg, src.mu.numel())
        if const is None:
            return src
        if name == "add":
            return ChannelStats(src.mu + const, src.var)
        if name == "sub":
            return ChannelStats(src.mu - const if sa is not None else const - src.mu, src.var)
        if name == "mul":
            return ChannelStats(src.mu * const, src.var * const ** 2)
        if name in ("div", "truediv") and sa is not None:
            return ChannelStats(src.mu / const, src.var / const ** 2)
        return src

    def _passthrough(self, node, stats) -> ChannelStats | None:
        if node.op == "call_function" and node.args and isinstance(node.args[0], torch.fx.Node):
            return stats.get(node.args[0].name)
        return None


def bn_targets(gm: torch.fx.GraphModule) -> list[HookedLayer]:
    """ZeroQ targets: each BatchNorm's running statistics, matched on the tensor the BN normalises
    (its input node in the graph, not a module-order guess)."""
    modules = dict(gm.named_modules())
    layers = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            bn = modules[node.target]
            src = node.args[0]
            if not isinstance(src, torch.fx.Node) or src.op != "call_module":
                continue  # BN directly on the input or a function output: hook the BN input instead below
            layers.append(HookedLayer(src.name, src.target, bn.running_mean.detach().float(),
                                      torch.sqrt(bn.running_var.detach().float() + bn.eps)))
    return layers
