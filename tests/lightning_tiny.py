"""The small LightningModule the Lightning integration tests train: a 2-layer MLP whose
validation step feeds nclab's ``NeuralCollapse`` metric on the penultimate features."""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torch import nn

from nclab.integrations.torchmetrics import NeuralCollapse


class Tiny(L.LightningModule):
    """Weights drawn from a fixed generator; ``logged`` holds the metric's last epoch, which is
    also logged (``val_nc/<key>``)."""

    def __init__(self, classes: int, dim: int, *, lr: float = 0.1, hidden: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        self.lr = lr
        self.val_nc = NeuralCollapse(classes, classifier=self.fc)
        self.logged: dict = {}

    def forward(self, x):
        return self.fc(self.body(x))

    def training_step(self, batch, _):
        x, y = batch[:2]
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, _):
        x, y, yc = batch
        self.val_nc.update(self.body(x), y, yc)

    def on_validation_epoch_end(self):
        out = self.val_nc.compute()
        self.logged = {k: float(v) for k, v in out.items()}
        self.log_dict({f"val_nc/{k}": v for k, v in out.items()})
        self.val_nc.reset()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)
