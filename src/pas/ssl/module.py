"""LightningModule: backbone + SSL method, AdamW with linear warmup then cosine decay per step."""
from __future__ import annotations

import functools
import math
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear ramp over warmup_steps, then cosine from 1 to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only, not on biases and norm parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


class PretrainModule(L.LightningModule):
    """Trains `backbone` with `method` (see pas.ssl); records the mean loss of every epoch."""

    def __init__(self, backbone: nn.Module, method: nn.Module, lr: float, weight_decay: float,
                 warmup_steps: int, total_steps: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.epoch_losses: list[float] = []
        self._loss_sum: Tensor | None = None
        self._loss_count = 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One optimisation step on a batch of two views."""
        out = self.method(self.backbone, batch["view1"], batch["view2"])
        loss = out["loss"]
        size = batch["view1"].shape[0]
        self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        for name, value in out.items():
            if name != "loss":
                self.log(name, value, on_step=True, on_epoch=False, batch_size=size)
        self.log("lr", self.lr_schedulers().get_last_lr()[0], on_step=True, on_epoch=False, batch_size=size)
        detached = loss.detach().float()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._loss_count += 1
        return loss

    def on_train_epoch_end(self) -> None:
        """Log and keep the epoch's mean loss (averaged over ranks)."""
        if not self._loss_count:
            return
        mean = self._loss_sum / self._loss_count
        self.log("loss_epoch", mean, on_step=False, on_epoch=True, sync_dist=True)
        synced = self.trainer.strategy.reduce(mean, reduce_op="mean")
        self.epoch_losses.append(float(synced))
        self._loss_sum, self._loss_count = None, 0

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with a per-step warmup + cosine schedule."""
        optimizer = torch.optim.AdamW(param_groups(self, self.weight_decay), lr=self.lr)
        schedule = functools.partial(warmup_cosine, warmup_steps=self.warmup_steps, total_steps=self.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
