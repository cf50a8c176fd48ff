"""LightningModule: backbone + SSL method; AdamW or LARS, linear warmup then cosine decay per optimizer step.

Per step it logs the loss, the method's terms and schedule values, the lr and images/s; per
epoch their means and the collapse indicators of the method's embeddings. It calls the method's
hooks around every optimizer step (see pas.ssl.base).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from pas.ssl.base import Progress, SSLMethod
from pas.ssl.monitor import effective_rank, embedding_std


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear ramp over warmup_steps, then cosine from 1 to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def cosine_between(start: float, end: float, step: int, total_steps: int) -> float:
    """Cosine from `start` at step 0 to `end` at total_steps (DINO's weight-decay and momentum shape)."""
    progress = min(1.0, max(0.0, step / max(1, total_steps)))
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def clip_per_parameter(parameters: Any, max_norm: float) -> None:
    """Scale each gradient whose own norm exceeds max_norm down to it (DINO utils.clip_gradients)."""
    for p in parameters:
        if p.grad is not None:
            coef = max_norm / (float(p.grad.norm(2)) + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer and schedules: AdamW or LARS (SGD momentum with layer-wise trust ratios)."""

    name: str = "adamw"                     # adamw | lars
    lr: float = 1e-3
    weight_decay: float = 1e-4
    weight_decay_end: float | None = None   # cosine from weight_decay to this over training (DINO: 0.04 -> 0.4)
    momentum: float = 0.9                   # lars
    trust_coeff: float = 0.02               # lars: the trust ratio's eta
    trust_clip: bool = True                 # lars: adaptive lr clipped at the global lr (solo-learn `clip_lr`)


def make_optimizer(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW, or timm's LARS: trust ratios on the groups with weight decay (matrices and kernels), plain SGD
    momentum on biases and norms, as in SimCLR/BYOL."""
    if cfg.name == "lars":
        from timm.optim import Lars

        groups = [{**group, "always_adapt": group["decay"]} for group in groups]
        return Lars(groups, lr=cfg.lr, momentum=cfg.momentum, trust_coeff=cfg.trust_coeff, trust_clip=cfg.trust_clip)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.name!r}; use adamw or lars")


def param_groups(module: nn.Module, weight_decay: float, lr: float,
                 lr_scales: dict[nn.Module, float] | None = None) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (lr scale, decay) in module order: weight decay on matrices and kernels only."""
    scale_of = {id(p): scale for sub, scale in (lr_scales or {}).items() for p in sub.parameters()}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for p in module.parameters():
        if p.requires_grad:
            groups.setdefault((scale_of.get(id(p), 1.0), p.ndim > 1), []).append(p)
    return [{"params": params, "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0, "decay": decay}
            for (scale, decay), params in groups.items()]


class PretrainModule(L.LightningModule):
    """Trains `backbone` with `method`; keeps per-epoch means in `history` (saved in checkpoints)."""

    def __init__(self, backbone: nn.Module, method: SSLMethod, optimizer: OptimizerConfig,
                 warmup_steps: int, total_steps: int, steps_per_epoch: float, monitor_rows: int = 1024) -> None:
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.optimizer_cfg = optimizer
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.monitor_rows = monitor_rows
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, Tensor | float] = {}
        self._count = 0
        self._embeddings: list[Tensor] = []
        self._last_batch_end: float | None = None
        self.start_step = 0

    @property
    def epoch_losses(self) -> list[float]:
        """Mean loss of every epoch so far (averaged over ranks)."""
        return [h["loss"] for h in self.history]

    def weight_decay_at(self, step: int) -> float:
        """Weight decay of the decayed groups before optimizer step `step` + 1 (constant unless weight_decay_end)."""
        cfg = self.optimizer_cfg
        if cfg.weight_decay_end is None:
            return cfg.weight_decay
        return cosine_between(cfg.weight_decay, cfg.weight_decay_end, step, self.total_steps)

    def progress(self, step: int) -> Progress:
        """Progress after `step` optimizer steps."""
        return Progress(step, self.total_steps, self.steps_per_epoch)

    def on_train_start(self) -> None:
        """Note the step training starts from (> 0 when resumed from a checkpoint)."""
        self.start_step = self.trainer.global_step

    def on_train_epoch_start(self) -> None:
        self._last_batch_end = None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One optimisation step on a batch of views."""
        if "label" in batch:   # prompt groups (pas.ssl.groups): each group's label goes to the method
            out = self.method(self.backbone, batch["views"], batch["label"])
        else:
            out = self.method(self.backbone, batch["views"])
        size = batch["views"][0].shape[0]
        self.log("loss", out.loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        for name, value in out.logs.items():
            self.log(name, value, on_step=True, on_epoch=False, batch_size=size)
        self.log("lr", self.lr_schedulers().get_last_lr()[0], on_step=True, on_epoch=False, batch_size=size)
        if self.optimizer_cfg.weight_decay_end is not None:
            self.log("weight_decay", self.weight_decay_at(self.global_step), on_step=True, on_epoch=False,
                     batch_size=size)
        for name, value in {"loss": out.loss, **out.logs}.items():
            value = value.detach().float() if isinstance(value, Tensor) else value
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._count += 1
        self._embeddings = [*self._embeddings, out.embedding.float()][-max(1, self.monitor_rows // size):]
        return out.loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log images/s over the whole batch cycle (data wait included), from the second batch of an epoch."""
        now, size = time.perf_counter(), batch["views"][0].shape[0]
        if self._last_batch_end is not None:
            rate = size * self.trainer.world_size / max(now - self._last_batch_end, 1e-9)
            self.log("images_per_sec", rate, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        self._last_batch_end = now

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients exist: let the method edit them (e.g. DINO freezes its last layer at first)."""
        self.method.before_optimizer_step(self.progress(self.trainer.global_step))

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        """Clip gradients to the method's grad_clip (if any): one global norm, or each tensor's (DINO)."""
        if self.method.grad_clip <= 0:
            return
        if self.method.grad_clip_per_parameter:
            clip_per_parameter(self.parameters(), self.method.grad_clip)
        else:
            self.clip_gradients(optimizer, gradient_clip_val=self.method.grad_clip, gradient_clip_algorithm="norm")

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Set this step's weight decay, step, then the method's after-step hook (EMA teacher, queue, centre)."""
        weight_decay = self.weight_decay_at(self.trainer.global_step)
        for group in optimizer.param_groups:
            group["weight_decay"] = weight_decay if group.get("decay") else 0.0
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.method.after_optimizer_step(self.backbone, self.progress(self.trainer.global_step + 1))

    def on_train_epoch_end(self) -> None:
        """Log and keep the epoch's means (over ranks) and the collapse indicators of its last embeddings."""
        if not self._count:
            return
        reduce = functools.partial(self.trainer.strategy.reduce, reduce_op="mean")
        means = {name: float(reduce(torch.as_tensor(total / self._count, dtype=torch.float32, device=self.device)))
                 for name, total in self._sums.items()}
        embeddings = torch.cat(self._embeddings)
        means["embedding_std"] = float(reduce(torch.tensor(embedding_std(embeddings), device=self.device)))
        means["embedding_rank"] = float(reduce(torch.tensor(effective_rank(embeddings), device=self.device)))
        for name, value in means.items():
            self.log(f"{name}_epoch" if name in self._sums else name, value, on_step=False, on_epoch=True,
                     sync_dist=True)
        self.history.append(means)
        self._sums, self._count, self._embeddings = {}, 0, []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the epoch history and the running sums of the interrupted epoch."""
        sums = {name: float(total) for name, total in self._sums.items()}
        checkpoint["pas"] = {"history": self.history, "sums": sums, "count": self._count}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore what on_save_checkpoint kept."""
        state = checkpoint.get("pas", {})
        self.history = list(state.get("history", []))
        self._sums, self._count = dict(state.get("sums", {})), int(state.get("count", 0))

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimizer with a per-step warmup + cosine lr schedule (scaled groups keep their ratio)."""
        cfg = self.optimizer_cfg
        groups = param_groups(self, cfg.weight_decay, cfg.lr, self.method.lr_scales())
        optimizer = make_optimizer(groups, cfg)
        schedule = functools.partial(warmup_cosine, warmup_steps=self.warmup_steps, total_steps=self.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
