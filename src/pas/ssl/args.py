"""Every SSL method's hyperparameters (params.pretrain.method_args.<name>), without torch.

A method's module (pas.ssl.<name>) builds the method from these; config checks and `pas plan` read them here, so
that checking a params file imports no method, no torch. `validate` checks a block's own ranges; `check_run` checks
it against one run's sizes (image size, global batch).
"""
from __future__ import annotations

from dataclasses import dataclass

from pas.core.config import require, require_fields


class RunChecks:
    """The default: a method's args fit any run's sizes, and it trains on single images."""

    def check_run(self, image_size: int, global_batch: int, prefix: str) -> None:
        """Raise a ConfigError (naming `prefix`.key) if these args do not fit this run's sizes."""

    @property
    def group_views(self) -> int | None:
        """Views per item when the method trains on prompt groups (pas.ssl.groups: m images of one prompt, a label
        per group), else None: pretraining streams such groups and the cost model prices them."""
        return None


class QueueChecks(RunChecks):
    """Methods with a support queue (NNCLR, All4One): it holds whole global batches."""

    queue_size: int

    def check_run(self, image_size: int, global_batch: int, prefix: str) -> None:
        """The queue holds whole global batches."""
        check_queue(self.queue_size, global_batch, f"{prefix}.queue_size")


def check_queue(queue_size: int, global_batch: int, key: str) -> None:
    """A support queue must hold a whole number of global batches."""
    require(queue_size % global_batch == 0, key, queue_size,
            f"use a multiple of the global batch ({global_batch} = batch_size x devices)")


def require_crop_scales(args: object, prefix: str) -> None:
    """A method's global_crop_scale and local_crop_scale are each [low, high] with 0 < low <= high <= 1."""
    for name in ("global_crop_scale", "local_crop_scale"):
        low_high = getattr(args, name)
        require(len(low_high) == 2 and 0 < low_high[0] <= low_high[1] <= 1, f"{prefix}.{name}", list(low_high),
                "use [low, high] with 0 < low <= high <= 1")


@dataclass(frozen=True)
class SimCLRArgs(RunChecks):
    """params.pretrain.method_args.simclr."""

    temperature: float = 0.2
    proj_dim: int = 128

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        require(self.temperature > 0, f"{prefix}.temperature", self.temperature, "use a positive number")
        require(self.proj_dim >= 1, f"{prefix}.proj_dim", self.proj_dim, "use an integer >= 1")


@dataclass(frozen=True)
class NNCLRArgs(QueueChecks):
    """params.pretrain.method_args.nnclr (defaults: the paper)."""

    temperature: float = 0.1
    queue_size: int = 98304
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        require(self.temperature > 0, f"{prefix}.temperature", self.temperature, "use a positive number")
        require_fields(self, prefix, ("queue_size", "proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"),
                       lambda v: v >= 1, "use an integer >= 1")


@dataclass(frozen=True)
class BarlowTwinsArgs(RunChecks):
    """params.pretrain.method_args.barlow_twins (defaults: the paper)."""

    proj_hidden_dim: int = 8192
    proj_output_dim: int = 8192
    lambd: float = 0.0051

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        require_fields(self, prefix, ("proj_hidden_dim", "proj_output_dim"), lambda v: v >= 1, "use an integer >= 1")
        require(self.lambd >= 0, f"{prefix}.lambd", self.lambd, "use a number >= 0")


@dataclass(frozen=True)
class DINOArgs(RunChecks):
    """params.pretrain.method_args.dino. Defaults: the vanilla main_dino.py argument defaults (facebookresearch/dino,
    get_args_parser), not the README's "boosting" ViT-S variant (teacher_temp 0.07 over 30 warm-up epochs,
    norm_last_layer false): recipes/dino_vits16.yaml cites each value."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 0.0
    center_momentum: float = 0.9
    base_momentum: float = 0.996
    final_momentum: float = 1.0
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crops: int = 8
    local_crop_size: int = 96
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    freeze_last_layer_epochs: float = 1.0
    grad_clip: float = 3.0                   # each parameter's gradient norm (utils.clip_gradients), not a global one
    drop_path_rate: float = 0.1              # stochastic depth in the student; the teacher has none

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        require_fields(self, prefix, ("out_dim", "hidden_dim", "bottleneck_dim", "local_crop_size"),
                       lambda v: v >= 1, "use an integer >= 1")
        require_fields(self, prefix, ("student_temp", "teacher_temp", "warmup_teacher_temp"),
                       lambda v: v > 0, "use a positive number")
        require_fields(self, prefix, ("center_momentum", "base_momentum", "final_momentum", "drop_path_rate"),
                       lambda v: 0 <= v <= 1, "use a number in [0, 1]")
        require_fields(self, prefix, ("warmup_teacher_temp_epochs", "freeze_last_layer_epochs", "grad_clip",
                                      "local_crops"),
                       lambda v: v >= 0, "use a number >= 0")
        require_crop_scales(self, prefix)

    def check_run(self, image_size: int, global_batch: int, prefix: str) -> None:
        """Local crops are smaller than the global ones."""
        require(self.local_crop_size < image_size, f"{prefix}.local_crop_size", self.local_crop_size,
                f"use a size below pretrain.image_size ({image_size})")


@dataclass(frozen=True)
class All4OneArgs(QueueChecks):
    """params.pretrain.method_args.all4one (defaults: the paper / official code)."""

    proj_hidden_dim: int = 2048
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096
    queue_size: int = 98304
    k: int = 5
    temperature: float = 0.2                 # neighbour contrast
    centroid_temperature: float = 0.1
    centroid_layers: int = 3
    centroid_heads: int = 8
    centroid_dropout: float = 0.1
    centroid_lr_scale: float = 0.1           # the centroid module's lr / base lr (0.1 / 1.0 with LARS)
    base_momentum: float = 0.99
    final_momentum: float = 1.0
    feature_scale: float = 10.0
    centroid_weight: float = 0.5
    neighbour_weight: float = 0.5
    feature_weight: float = 0.5

    def validate(self, prefix: str) -> None:
        """Check ranges and that the heads split the embedding."""
        require_fields(self, prefix, ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim", "queue_size",
                                      "centroid_layers", "centroid_heads"),
                       lambda v: v >= 1, "use an integer >= 1")
        require(self.k >= 2, f"{prefix}.k", self.k, "use an integer >= 2 (the query keeps k - 1 neighbours)")
        require(self.k <= self.queue_size, f"{prefix}.k", self.k, f"use at most queue_size ({self.queue_size})")
        require(self.proj_output_dim % self.centroid_heads == 0, f"{prefix}.centroid_heads", self.centroid_heads,
                f"use a divisor of proj_output_dim ({self.proj_output_dim})")
        require_fields(self, prefix, ("temperature", "centroid_temperature", "centroid_lr_scale"),
                       lambda v: v > 0, "use a positive number")
        require_fields(self, prefix, ("centroid_dropout", "base_momentum", "final_momentum"),
                       lambda v: 0 <= v <= 1, "use a number in [0, 1]")
        require_fields(self, prefix, ("feature_scale", "centroid_weight", "neighbour_weight", "feature_weight"),
                       lambda v: v >= 0, "use a number >= 0")


@dataclass(frozen=True)
class SwAVArgs(RunChecks):
    """params.pretrain.method_args.swav (defaults: the official ImageNet recipe; see the citations)."""

    nmb_prototypes: int = 3000       # main_swav.py:67
    feat_dim: int = 128              # main_swav.py:65
    hidden_mlp: int = 2048           # main_swav.py:148 (fixed for resnet50)
    temperature: float = 0.1         # main_swav.py:59
    epsilon: float = 0.05            # main_swav.py:61
    sinkhorn_iterations: int = 3     # main_swav.py:63
    queue_length: int = 0            # main_swav.py:69 (0: no queue); the batch-256 scripts use 3840 (..._bs256_pretrain.sh)
    epoch_queue_starts: int = 15     # main_swav.py:71
    freeze_prototypes_epochs: float = 1.0  # main_swav.py:83,323-326: 313 iterations at batch 4096; 5005 at 256 (1 epoch)
    global_crop_scale: tuple[float, float] = (0.14, 1.0)   # main_swav.py:49,51 / bs256 script: 0.14 1.
    local_crops: int = 6             # bs256 script: --nmb_crops 2 6, --size_crops 224 96
    local_crop_size: int = 96
    local_crop_scale: tuple[float, float] = (0.05, 0.14)   # bs256 script: --min_scale_crops 0.14 0.05 --max ... 0.14

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        require_fields(self, prefix, ("nmb_prototypes", "feat_dim", "hidden_mlp", "sinkhorn_iterations",
                                      "local_crop_size"), lambda v: v >= 1, "use an integer >= 1")
        require_fields(self, prefix, ("temperature", "epsilon"), lambda v: v > 0, "use a positive number")
        require_fields(self, prefix, ("queue_length", "epoch_queue_starts", "freeze_prototypes_epochs", "local_crops"),
                       lambda v: v >= 0, "use a number >= 0")
        require_crop_scales(self, prefix)

    def check_run(self, image_size: int, global_batch: int, prefix: str) -> None:
        """Local crops are smaller than the global ones; the queue holds whole global batches."""
        if self.local_crops:
            require(self.local_crop_size < image_size, f"{prefix}.local_crop_size", self.local_crop_size,
                    f"use a size below pretrain.image_size ({image_size})")
        require(self.queue_length % global_batch == 0, f"{prefix}.queue_length", self.queue_length,
                f"use 0 or a multiple of the global batch ({global_batch})")


@dataclass(frozen=True)
class LeJEPAArgs(RunChecks):
    """params.pretrain.method_args.lejepa (defaults: the official recipe; see the citations in the comments)."""

    lamb: float = 0.02               # SIGReg weight; invariance gets 1 - lamb (MINIMAL.md:175,219)
    proj_dim: int = 16               # MINIMAL.md:219 (+proj_dim=16)
    proj_hidden_dim: int = 2048      # MINIMAL.md:89: MLP(emb, [2048, 2048, proj_dim], BatchNorm1d)
    num_slices: int = 256            # MINIMAL.md:71; redrawn each step, same on every rank (slicing.py:131-141)
    knots: int = 17                  # MINIMAL.md:59-64 / epps_pulley.py:61: 17 knots on [0, 3]
    t_max: float = 3.0
    global_views: int = 4            # MINIMAL.md:219 (+V=4); the target is the centroid of these views
    local_views: int = 0             # the paper's ImageNet recipe adds 6 x 96 px crops (2 global + 6 local)
    local_crop_size: int = 96
    global_crop_scale: tuple[float, float] = (0.08, 1.0)   # MINIMAL.md:103
    local_crop_scale: tuple[float, float] = (0.05, 0.3)
    heldout_images: int = 256        # pas: a fixed sample of the curated set kept out of training, scored at the end

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        require(0.0 <= self.lamb <= 1.0, f"{prefix}.lamb", self.lamb, "use a weight in [0, 1]")
        require_fields(self, prefix, ("proj_dim", "proj_hidden_dim", "num_slices", "global_views", "local_crop_size"),
                       lambda v: v >= 1, "use an integer >= 1")
        require(self.knots >= 2, f"{prefix}.knots", self.knots, "use an integer >= 2")
        require(self.t_max > 0, f"{prefix}.t_max", self.t_max, "use a positive number")
        require_fields(self, prefix, ("local_views", "heldout_images"), lambda v: v >= 0, "use an integer >= 0")
        require_crop_scales(self, prefix)

    def check_run(self, image_size: int, global_batch: int, prefix: str) -> None:
        """Local views are smaller than the global ones."""
        if self.local_views:
            require(self.local_crop_size < image_size, f"{prefix}.local_crop_size", self.local_crop_size,
                    f"use a size below pretrain.image_size ({image_size})")


@dataclass(frozen=True)
class StableRepArgs(RunChecks):
    """params.pretrain.method_args.stablerep (defaults: the official StableRep code and README)."""

    images_per_prompt: int = 6      # README.md training command `--n_img 6` (6 of the 10 images of a caption)
    temperature: float = 0.1        # main_stablerep.py `--ssl-temp` default 0.1 (losses.py MultiPosConLoss too)
    mlp_dim: int = 4096             # main_stablerep.py `--ssl-mlp-dim` default 4096
    proj_dim: int = 256             # main_stablerep.py `--ssl-emb-dim` default 256

    @property
    def group_views(self) -> int | None:
        """m views per group, one per image of a prompt."""
        return self.images_per_prompt

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        require(self.images_per_prompt >= 2, f"{prefix}.images_per_prompt", self.images_per_prompt,
                "use an integer >= 2 (a view needs a positive in its group)")
        require(self.temperature > 0, f"{prefix}.temperature", self.temperature, "use a positive number")
        require_fields(self, prefix, ("mlp_dim", "proj_dim"), lambda v: v >= 1, "use an integer >= 1")


METHOD_ARGS: dict[str, type[RunChecks]] = {
    "simclr": SimCLRArgs, "nnclr": NNCLRArgs, "barlow_twins": BarlowTwinsArgs, "dino": DINOArgs,
    "all4one": All4OneArgs, "swav": SwAVArgs, "lejepa": LeJEPAArgs,
    "stablerep": StableRepArgs}
