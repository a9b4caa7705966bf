"""Statistics estimation: the paper's recursion, ESA, and moment propagation vs Monte Carlo."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gzsq.config import EsaRule
from gzsq.models import from_torch_module
from gzsq.statistics import ChannelStats, StatisticsEstimator, _quadrature, bn_targets, esa_pair


def _layers(module, shape, rule, rho=0.0):
    model = from_torch_module(module.eval(), shape)
    gm = model.torch_module()
    est = StatisticsEstimator(gm, rule, EsaRule(), rho)
    c = shape[0]
    return est.hooked_layers(torch.zeros(2, *shape), np.zeros(c, np.float32), np.ones(c, np.float32)), gm


def test_paper_recursion_matches_formula():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    layers, _ = _layers(nn.Sequential(conv), (3, 8, 8), "paper")
    w = conv.weight.detach().double().reshape(3, -1)
    expected_mu = w.mean(1) + 0.0 + conv.bias.detach().double()
    expected_sigma = torch.sqrt(w.std(1, unbiased=False) ** 2 + 1.0)
    assert torch.allclose(layers[0].target_mu.double(), expected_mu, atol=1e-5)
    assert torch.allclose(layers[0].target_sigma.double(), expected_sigma, atol=1e-5)


def test_paper_folds_bn_into_the_conv():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    net[1].weight.data.uniform_(0.5, 2)
    layers, _ = _layers(net, (3, 8, 8), "paper")
    assert len(layers) == 1  # one hooked tensor: the BN output
    conv, bn = net
    factor = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w = (conv.weight.detach().double() * factor.reshape(-1, 1, 1, 1)).reshape(4, -1)
    b = (conv.bias.detach().double() - bn.running_mean.double()) * factor + bn.bias.detach().double()
    mu_in = torch.tensor([0.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # ESA expansion of a zero-mean input
    assert torch.allclose(layers[0].target_mu.double(), w.mean(1) + mu_in + b, atol=1e-5)


def test_esa_expansion_and_contraction():
    stats = ChannelStats(torch.tensor([1.0, 3.0], dtype=torch.float64), torch.tensor([1.0, 4.0], dtype=torch.float64))
    mu, sigma = esa_pair(stats, 4, EsaRule(expansion_mu="max", expansion_sigma="mean"))
    assert mu.tolist() == [1.0, 3.0, 3.0, 3.0]
    assert sigma.tolist() == [1.0, 2.0, 1.5, 1.5]
    mu, sigma = esa_pair(stats, 1, EsaRule(contraction_mu="mean", contraction_sigma="mean+min"))
    assert mu.tolist() == [2.0] and sigma.tolist() == [2.5]


def test_quadrature_relu_matches_closed_form():
    from math import erf, exp, pi, sqrt

    stats = ChannelStats(torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([1.0, 4.0], dtype=torch.float64))
    out = _quadrature(nn.ReLU(), stats, 4)
    for c, (m, v) in enumerate([(0.3, 1.0), (-1.0, 4.0)]):
        s = sqrt(v)
        a = m / s
        cdf, pdf = 0.5 * (1 + erf(a / sqrt(2))), exp(-a * a / 2) / sqrt(2 * pi)
        mean = m * cdf + s * pdf
        second = (m * m + v) * cdf + m * s * pdf
        assert abs(out.mu[c].item() - mean) < 1e-3
        assert abs(out.var[c].item() - (second - mean ** 2)) < 2e-3


def test_moments_match_monte_carlo_for_independent_inputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 1))
    layers, _ = _layers(net, (2, 16, 16), "moments", rho=0.0)
    acts = {}
    x = torch.randn(4000, 2, 16, 16)
    with torch.no_grad():
        acts[0] = net[0](x)
        acts[1] = net[2](net[1](acts[0]))
    for layer, act in zip(layers, (acts[0], acts[1])):
        mc_mu = act.mean((0, 2, 3))
        mc_sigma = act.std((0, 2, 3))
        assert torch.allclose(layer.target_mu, mc_mu, atol=0.03 + 0.03 * mc_sigma.max().item())
        assert torch.allclose(layer.target_sigma, mc_sigma, rtol=0.08)


def test_zeroq_targets_follow_graph_edges_not_module_order():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn_late = nn.BatchNorm2d(8)   # declared first, used last
            self.conv_a = nn.Conv2d(3, 4, 3)
            self.bn_a = nn.BatchNorm2d(4)
            self.conv_b = nn.Conv2d(4, 8, 3)

        def forward(self, x):
            return self.bn_late(self.conv_b(torch.relu(self.bn_a(self.conv_a(x)))))

    torch.manual_seed(0)
    m = Odd().eval()
    m.bn_late.running_mean.fill_(5.0)
    m.bn_a.running_mean.fill_(-2.0)
    model = from_torch_module(m, (3, 12, 12))
    targets = bn_targets(model.torch_module())
    assert sorted(t.target_mu.numel() for t in targets) == [4, 8]
    by_size = {t.target_mu.numel(): t for t in targets}
    assert torch.allclose(by_size[8].target_mu, torch.full((8,), 5.0))
    assert torch.allclose(by_size[4].target_mu, torch.full((4,), -2.0))
