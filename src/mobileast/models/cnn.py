"""A CP-ResNet-like CNN: the CPU-friendly demo teacher.

Much larger than the student (1.2 M parameters, about 23x) yet cheap to train from
scratch on 2 CPU cores: a strided 5x5 stem and a 2x2 max-pool before every stage halve
the resolution while the width doubles, so each stage costs about the same and the wide
late stages run on few positions (60 M MACs per clip). Plain 3x3 convs are fast on
CPU, unlike depthwise ones: a training step costs about a fifth of the student's CPU
time per clip. Residual blocks, global average pooling, dropout, linear head.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from mobileast.models.mobileast import ConvBNAct


@dataclass
class CNNConfig:
    """Widths of the stem and of each residual stage (one max-pool 2x2 before each stage)."""

    in_channels: int = 1
    stem_channels: int = 16
    channels: tuple[int, ...] = (32, 64, 128, 256)
    blocks_per_stage: int = 1
    dropout: float = 0.3
    num_classes: int = 10

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)


PRESETS: dict[str, CNNConfig] = {"teacher_cnn": CNNConfig()}


class ResBlock(nn.Module):
    """Two 3x3 conv-BN layers with a (1x1-projected when widths differ) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = ConvBNAct(c_in, c_out, 3, act=nn.ReLU)
        self.conv2 = ConvBNAct(c_out, c_out, 3)
        self.shortcut = ConvBNAct(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.conv2(self.conv1(x)))


class CNN(nn.Module):
    """(B, 1, n_mels, frames) log-mel -> (B, num_classes) logits."""

    def __init__(self, cfg: CNNConfig):
        super().__init__()
        self.cfg = cfg
        stages: OrderedDict[str, nn.Module] = OrderedDict(
            stem=ConvBNAct(cfg.in_channels, cfg.stem_channels, 5, 2, act=nn.ReLU))  # (B, c, 128, 32)
        c_in = cfg.stem_channels
        for i, c in enumerate(cfg.channels, 1):
            layers = [nn.MaxPool2d(2)] + [ResBlock(c_in if j == 0 else c, c) for j in range(cfg.blocks_per_stage)]
            stages[f"stage{i}"] = nn.Sequential(*layers)
            c_in = c
        self.blocks = nn.Sequential(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(c_in, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, F, T)
        x = self.pool(self.blocks(x)).flatten(1)  # (B, C)
        return self.classifier(self.dropout(x))
