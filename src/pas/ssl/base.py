"""What every SSL method shares: the output of a step, training progress, and the default hooks.

A method owns its heads (and any teacher or queue) but not the backbone, which PretrainModule
passes into every call. The module calls the hooks in this order for each optimizer step:
forward (once per accumulated batch) -> backward -> before_optimizer_step -> optimizer step ->
after_optimizer_step.
"""
from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image
from torch import Tensor, nn

from pas.ssl.augment import simclr_view

Transform = Callable[[Image.Image], Tensor]


@dataclass(frozen=True)
class Progress:
    """Where training stands: `step` optimizer steps done out of `total_steps`."""

    step: int
    total_steps: int
    steps_per_epoch: float       # a nominal epoch under pretrain.budget (total steps / pretrain.epochs)

    @property
    def fraction(self) -> float:
        """Share of training done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))

    @property
    def epoch(self) -> float:
        """Epochs done, fractional."""
        return self.step / max(1, self.steps_per_epoch)


@dataclass
class MethodOutput:
    """One training step: the loss to minimise, scalars to log, and an embedding to watch for collapse."""

    loss: Tensor                 # ()
    logs: dict[str, Tensor | float]  # name -> scalar: loss terms, schedule values; logged per step and epoch
    embedding: Tensor            # (N, D) detached: what the loss sees for the first view


class SSLMethod(nn.Module, abc.ABC):
    """Base class: two plain SimCLR views, no schedule, the online backbone is the result."""

    Args: ClassVar[type]         # the method's frozen dataclass of hyperparameters
    grad_clip: float = 0.0       # clip the gradient norm to this before each step (0: no clipping)
    grad_clip_per_parameter: bool = False  # clip each tensor's norm (DINO) instead of the global norm
    heldout_images: int = 0      # images pretrain keeps out of training to compute label_free_score on

    @classmethod
    def view_transforms(cls, args: Any, image_size: int) -> list[Transform]:
        """The augmentation of every view the method trains on (in the order forward expects)."""
        return [simclr_view(image_size), simclr_view(image_size)]

    @classmethod
    def backbone_kwargs(cls, args: Any) -> dict[str, Any]:
        """Extra timm create_model arguments for the online backbone (DINO: drop_path_rate)."""
        return {}

    @classmethod
    def check(cls, args: Any, image_size: int, global_batch: int, prefix: str) -> None:
        """Raise a ConfigError (naming `prefix`.key) if args do not fit this run's sizes (pas.ssl.args)."""
        args.check_run(image_size, global_batch, prefix)

    @abc.abstractmethod
    def forward(self, backbone: nn.Module, views: list[Tensor]) -> MethodOutput:
        """views: one (N, 3, H, W) batch per view -> the step's loss."""

    def lr_scales(self) -> dict[nn.Module, float]:
        """Submodules trained at a multiple of the base learning rate."""
        return {}

    def before_optimizer_step(self, progress: Progress) -> None:
        """Called after backward, before the optimizer step `progress.step` + 1 (gradients exist)."""

    def after_optimizer_step(self, backbone: nn.Module, progress: Progress) -> None:
        """Called after each optimizer step; `progress.step` counts the step just taken."""

    def label_free_score(self, backbone: nn.Module, views: list[Tensor]) -> Tensor | None:
        """A loss on held-out views that tracks downstream accuracy without labels (LeJEPA), else None."""
        return None

    def export_backbone(self, backbone: nn.Module) -> nn.Module:
        """The backbone to save and evaluate (DINO: its EMA teacher)."""
        return backbone
