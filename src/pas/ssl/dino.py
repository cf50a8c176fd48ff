"""DINO (Caron et al. 2021): self-distillation of a multi-crop student into an EMA teacher with centring
and sharpening. The exported backbone is the teacher's."""
from __future__ import annotations

from itertools import groupby

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pas.ssl.args import DINOArgs
from pas.ssl.augment import simclr_view
from pas.ssl.base import MethodOutput, Progress, SSLMethod, Transform
from pas.ssl.dist import mean_over_ranks
from pas.ssl.heads import cosine_momentum, ema_update, momentum_copy


class DINOHead(nn.Module):
    """MLP (GELU) to a bottleneck, L2-normalise, weight-normalised linear layer to out_dim prototypes."""

    def __init__(self, in_dim: int, args: DINOArgs) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, args.hidden_dim), nn.GELU(),
            nn.Linear(args.hidden_dim, args.hidden_dim), nn.GELU(),
            nn.Linear(args.hidden_dim, args.bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = nn.Linear(args.bottleneck_dim, args.out_dim, bias=False)     # weight-norm direction v
        self.last_scale = nn.Parameter(torch.ones(args.out_dim, 1), requires_grad=not args.norm_last_layer)  # g

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(N, F) -> (bottleneck (N, B) unit vectors, logits (N, K))."""
        bottleneck = F.normalize(self.mlp(features), dim=-1)
        weight = self.last_scale * F.normalize(self.last_layer.weight, dim=1)          # g * v / |v|
        return bottleneck, F.linear(bottleneck, weight)


def dino_loss(student: list[Tensor], teacher: list[Tensor], center: Tensor, student_temp: float,
              teacher_temp: float) -> Tensor:
    """Multi-crop self-distillation loss ().

    student: V logits (N, K), the G global crops first; teacher: G logits (N, K) of the global
    crops; center (K,). Each teacher crop's centred, sharpened softmax is the target of the
    student's log-softmax on every other crop; the mean over those G * (V - 1) pairs is returned.
    """
    targets = [F.softmax((t.float() - center) / teacher_temp, dim=-1).detach() for t in teacher]
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    total, pairs = 0.0, 0
    for i, q in enumerate(targets):
        for v, log_p in enumerate(log_probs):
            if v != i:
                total = total + (-q * log_p).sum(dim=-1).mean()
                pairs += 1
    return total / pairs


def without_drop_path(module: nn.Module) -> nn.Module:
    """Set every timm DropPath in `module` to drop nothing (the teacher of a drop-path student)."""
    from timm.layers import DropPath

    for layer in module.modules():
        if isinstance(layer, DropPath):
            layer.drop_prob = 0.0
    return module


def teacher_temperature(args: DINOArgs, epoch: float) -> float:
    """Linear warm-up from warmup_teacher_temp to teacher_temp over warmup_teacher_temp_epochs, then constant."""
    if epoch >= args.warmup_teacher_temp_epochs:
        return args.teacher_temp
    share = epoch / args.warmup_teacher_temp_epochs
    return args.warmup_teacher_temp + (args.teacher_temp - args.warmup_teacher_temp) * share


class DINO(SSLMethod):
    """Student = backbone + head; teacher = their EMA copies; centre = EMA of the teacher's mean logits."""

    Args = DINOArgs
    grad_clip_per_parameter = True

    def __init__(self, backbone: nn.Module, feature_dim: int, args: DINOArgs) -> None:
        super().__init__()
        self.args = args
        self.grad_clip = args.grad_clip
        self.head = DINOHead(feature_dim, args)
        self.teacher_backbone = without_drop_path(momentum_copy(backbone))
        self.teacher_head = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(args.out_dim))
        self.register_buffer("epoch", torch.zeros(()))            # epochs done, for the temperature schedule
        self._pending: list[Tensor] = []

    @classmethod
    def view_transforms(cls, args: DINOArgs, image_size: int) -> list[Transform]:
        """Two global crops (blur 1.0; blur 0.1 + solarise 0.2) and `local_crops` small crops (blur 0.5)."""
        return [
            simclr_view(image_size, args.global_crop_scale, blur=1.0),
            simclr_view(image_size, args.global_crop_scale, blur=0.1, solarize=0.2),
            *[simclr_view(args.local_crop_size, args.local_crop_scale, blur=0.5) for _ in range(args.local_crops)],
        ]

    @classmethod
    def backbone_kwargs(cls, args: DINOArgs) -> dict[str, float]:
        """The student backbone gets stochastic depth (main_dino.py builds the teacher without it)."""
        return {"drop_path_rate": args.drop_path_rate}

    def forward(self, backbone: nn.Module, views: list[Tensor]) -> MethodOutput:
        """views: 2 global (N, 3, S, S) then local (N, 3, s, s) batches -> DINO loss."""
        n = views[0].shape[0]
        with torch.no_grad():
            _, teacher = self.teacher_head(self.teacher_backbone(torch.cat(views[:2])))   # (2N, K)
        student, bottleneck = [], None
        for _, group in groupby(views, key=lambda v: v.shape[-2:]):       # one pass per resolution
            group = list(group)
            b, logits = self.head(backbone(torch.cat(group)))
            bottleneck = b[:n] if bottleneck is None else bottleneck
            student += list(logits.chunk(len(group)))
        temp = teacher_temperature(self.args, float(self.epoch))
        loss = dino_loss(student, list(teacher.chunk(2)), self.center, self.args.student_temp, temp)
        if self.training:
            self._pending.append(teacher.float().mean(0))
        return MethodOutput(loss, {"teacher_temp": temp}, bottleneck.detach())

    def before_optimizer_step(self, progress: Progress) -> None:
        """Keep the prototypes fixed during the first freeze_last_layer_epochs."""
        if progress.epoch < self.args.freeze_last_layer_epochs:
            for p in (self.head.last_layer.weight, self.head.last_scale):
                p.grad = None

    def after_optimizer_step(self, backbone: nn.Module, progress: Progress) -> None:
        """Update the centre with this step's teacher means, then the EMA teacher."""
        m = self.args.center_momentum
        for mean in self._pending:
            self.center.mul_(m).add_(mean_over_ranks(mean), alpha=1 - m)
        self._pending.clear()
        momentum = cosine_momentum(self.args.base_momentum, self.args.final_momentum, progress.fraction)
        ema_update(self.teacher_backbone, backbone, momentum)
        ema_update(self.teacher_head, self.head, momentum)
        self.epoch.fill_(progress.epoch)

    def export_backbone(self, backbone: nn.Module) -> nn.Module:
        """The teacher: DINO's evaluated and released network."""
        return self.teacher_backbone
