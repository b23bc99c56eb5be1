"""Models a user brings (our code knows nothing of them): a small CNN with batch norm, a residual add and
dropout, and an MLP on flat features; exported to ``.pt2`` the way the README tells users to."""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn

from rvsm import data as rdata


class ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.body = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.drop, self.head = nn.Dropout(0.2), nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        h = torch.relu(h + self.body(h))  # the residual add
        return self.head(self.drop(torch.max_pool2d(h, 2).flatten(1)))


class TabularMLP(nn.Module):
    """64 -> 96 -> 32 -> 10 on flat features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(64, 96), nn.Linear(96, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def export(model: nn.Module, example: torch.Tensor) -> bytes:
    """``torch.export`` with a dynamic batch dimension, as the README shows."""
    model.eval()
    ep = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def digits_npz(*, flat: bool) -> tuple[bytes, torch.Tensor, torch.Tensor]:
    """The digits as an uploaded ``.npz`` with an explicit held-out split; returns the file and ``(x_val, y_val)``."""
    d = rdata.digits(seed=0)
    x_tr, x_val = (d.x_train.flatten(1), d.x_val.flatten(1)) if flat else (d.x_train, d.x_val)
    buf = io.BytesIO()
    np.savez(buf, x=x_tr.numpy(), y=d.y_train.numpy(), x_val=x_val.numpy(), y_val=d.y_val.numpy())
    return buf.getvalue(), x_val, d.y_val
