"""pas.ssl.pretrain: config validation and an end-to-end run on tiny shards."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_ssl import one_thread  # noqa: F401  (fixture)

from conftest import write_image_shards
from pas.core.config import ConfigError, build
from pas.core.shards import encode_jpeg
from pas.ssl.pretrain import PretrainConfig, keys_digest, pretrain

TINY = "test_resnet"


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, Path]:
    """32 small JPEGs in 2 shards and their manifest."""
    root = tmp_path_factory.mktemp("curated")
    rng = np.random.default_rng(0)

    def image() -> Image.Image:
        return Image.fromarray(np.clip(rng.integers(0, 256, 3) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8))

    shards = [[(f"k{s}{i:02d}", image()) for i in range(16)] for s in range(2)]
    rows = [{**row, "source": "generated"} for row in write_image_shards(root, shards)]
    return pa.Table.from_pylist(rows), root


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A downstream-format parquet (image bytes, label, label_name): 3 colours x 4 images."""
    path = tmp_path_factory.mktemp("labeled") / "train.parquet"
    rng = np.random.default_rng(1)
    rows = []
    for label, colour in enumerate(([200, 30, 30], [30, 200, 30], [30, 30, 200])):
        for _ in range(4):
            array = np.clip(np.array(colour) + rng.normal(0, 10, (40, 40, 3)), 0, 255).astype(np.uint8)
            rows.append({"image": encode_jpeg(Image.fromarray(array)), "label": label, "label_name": f"c{label}"})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(autouse=True)
def cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAS_DEVICE", "cpu")
    monkeypatch.setenv("PAS_NUM_WORKERS", "0")


def test_config_defaults_build_from_params() -> None:
    assert build(PretrainConfig, {}, "pretrain") == PretrainConfig()
    cfg = build(PretrainConfig, {"warmup_epochs": 1, "lr": 0.5, "weight_decay": 0.04, "optimizer": "lars"},
                "pretrain")
    assert isinstance(cfg.warmup_epochs, float)          # YAML's 1 arrives as the float the schedule divides by
    optimizer = cfg.optimizer_config()                   # what the module is handed, not what was passed in
    assert (optimizer.name, optimizer.lr, optimizer.weight_decay) == ("lars", 0.5, 0.04)
    assert optimizer.momentum == PretrainConfig().momentum and optimizer.trust_coeff == PretrainConfig().trust_coeff
    with pytest.raises(ConfigError, match=r"^pretrain.warmup_epochs='soon' must be a number$"):
        build(PretrainConfig, {"warmup_epochs": "soon"}, "pretrain")


def test_params_yaml_builds_and_sizes_every_method_for_the_offline_default() -> None:
    """`dvc exp run -S pretrain.method=<any>` starts from small, valid heads and queues."""
    import yaml

    from conftest import REPO
    from pas.ssl import METHODS

    import dataclasses

    section = yaml.safe_load((REPO / "params.yaml").read_text())["pretrain"]
    cfg = build(PretrainConfig, section, "pretrain")
    assert cfg.method == "simclr" and set(cfg.method_args) == set(METHODS)
    for name, cls in METHODS.items():
        args = build(PretrainConfig, {**section, "method": name}, "pretrain").args()
        assert isinstance(args, cls.Args), name
        chosen = dataclasses.asdict(args)
        assert section["method_args"][name] and all(chosen[k] == v for k, v in section["method_args"][name].items())
        cls.check(args, section["image_size"], section["batch_size"], f"pretrain.method_args.{name}")


@pytest.mark.parametrize(("params", "key", "hint"), [
    ({"method": "no-such-method"}, "pretrain.method", "simclr"),
    ({"backbone": "resnet188"}, "pretrain.backbone", "resnet18"),
    ({"init": "missing/weights.safetensors"}, "pretrain.init", "random"),
    ({"batch_size": 1}, "pretrain.batch_size", ">= 2"),
    ({"knn_temperature": 0.0}, "pretrain.knn_temperature", "positive"),
    ({"method_args": {"simclr": {"temperature": 0.0}}}, "pretrain.method_args.simclr.temperature", "positive"),
    ({"method_args": {"all4one": {"queue": 8}}}, "pretrain.method_args.all4one.queue", "allowed keys"),
    ({"method_args": {"byol": {}}}, "pretrain.method_args.byol", "all4one"),
    ({"method_args": {"dino": 3}}, "pretrain.method_args.dino", "mapping"),
    ({"method": "all4one", "batch_size": 48, "method_args": {"all4one": {"queue_size": 64}}},
     "pretrain.method_args.all4one.queue_size", "multiple of the global batch"),
    ({"method": "dino", "method_args": {"dino": {"local_crop_size": 64}}}, "pretrain.method_args.dino.local_crop_size",
     "image_size"),
    ({"lr_scaling": "sqrt"}, "pretrain.lr_scaling", "linear, none"),
    ({"budget": "lots"}, "pretrain.budget", "500k"),
    ({"recipe": "no_such_recipe"}, "pretrain.recipe", "dino_vits16"),
    ({"warmup_epochs": 3}, "pretrain.warmup_epochs", "epochs"),
    ({"max_steps": 0}, "pretrain.max_steps", "-1"),
    ({"epochs": "2"}, "pretrain.epochs", "integer"),
    ({"optimizer": "sgd"}, "pretrain.optimizer", "adamw, lars"),
    ({"opt": "lars"}, "pretrain.opt", "allowed keys"),
    ({"accumulate_grad_batches": 0}, "pretrain.accumulate_grad_batches", ">= 1"),
    ({"weight_decay_end": -0.1}, "pretrain.weight_decay_end", "null"),
    ({"precision": "fp8"}, "pretrain.precision", "bf16-mixed"),
])
def test_bad_params_name_the_key(params: dict, key: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        build(PretrainConfig, params, "pretrain")
    assert hint in str(info.value)


def test_pretrain_writes_a_strictly_loadable_backbone(curated: tuple[pa.Table, Path], labeled: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    from lightning.pytorch.loggers import CSVLogger
    from safetensors.torch import load_file

    from pas.ssl.module import PretrainModule

    manifest, root = curated
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    seen: dict[int, list[str]] = {}
    step = PretrainModule.training_step

    def recording_step(self: PretrainModule, batch: dict, index: int) -> torch.Tensor:
        seen.setdefault(self.current_epoch, []).extend(batch["key"])
        return step(self, batch, index)

    monkeypatch.setattr(PretrainModule, "training_step", recording_step)
    cfg = PretrainConfig(backbone=TINY, image_size=32, epochs=3, batch_size=8, warmup_epochs=0.5, max_steps=10)
    out = tmp_path / "out"
    source = {"name": "curated", "path": "data/curated/manifest.parquet", "md5": "f" * 32}
    metrics = pretrain(manifest, root, cfg, out, seed=0, loggers=[CSVLogger(tmp_path / "csv", name="pretrain")],
                       knn_val=labeled, source=source)

    assert metrics["steps"] == 10 and metrics["images"] == 32         # 4 steps per epoch, cut at max_steps
    assert metrics["epochs"] == 3                                     # the cut third epoch counts
    keys = sorted(manifest.column("key").to_pylist())
    assert sorted(seen[0]) == sorted(seen[1]) == keys and seen[0] != seen[1]   # each key once, reshuffled
    assert len(seen[2]) == 16
    assert np.isfinite([metrics["loss_first_epoch"], metrics["loss_last_epoch"]]).all()
    assert metrics["images_per_second"] > 0 and metrics["resumed_at_step"] == 0
    assert metrics["knn_top1"] >= 0.9          # three far-apart colours: a neighbour shares its colour
    assert set(metrics["monitor"]) == {"embedding_std", "embedding_rank", "feature_std", "feature_rank"}
    assert all(np.isfinite(v) and v > 0 for v in metrics["monitor"].values())
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "backbone.safetensors", "config.json",
                                                      "model.safetensors", "model_card.json"]
    assert not any(cwd.iterdir())                                     # no lightning_logs litter

    model = timm.create_model(TINY, num_classes=0)
    model.load_state_dict(load_file(str(out / "backbone.safetensors")), strict=True)
    assert torch.isfinite(model.eval()(torch.randn(2, 3, 32, 32))).all()
    # the folder loads the way timm users load any model: local-dir (the hf-hub layout), no num_classes to guess
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    config = timm.data.resolve_data_config({}, model=loaded)
    assert loaded.num_classes == 0 and config["input_size"] == (3, 32, 32)            # the training resolution
    assert (tuple(config["mean"]), tuple(config["std"])) == (timm.data.IMAGENET_DEFAULT_MEAN,
                                                              timm.data.IMAGENET_DEFAULT_STD)
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(pixels), model(pixels))                                   # the trained weights
    with_head = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=3)   # a classifier on top
    assert with_head(pixels).shape == (2, 3)
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: timm") and 'timm.create_model("local-dir:' in readme

    card = json.loads((out / "model_card.json").read_text())
    assert card["backbone"] == TINY and card["method"] == "simclr" and card["images"] == 32
    assert card["manifest_keys_sha256"] == keys_digest(manifest) and card["dataset"] == source
    assert card["final_loss"] == metrics["loss_last_epoch"] and card["config"]["batch_size"] == 8
    assert card["method_args"] == {"temperature": 0.2, "proj_dim": 128}
    assert card["metrics"]["knn_top1"] == metrics["knn_top1"] and card["exported"] == "online backbone"

    (csv,) = (tmp_path / "csv").rglob("metrics.csv")
    header = csv.read_text().splitlines()[0].split(",")
    assert {"loss", "loss_epoch", "lr", "images_per_sec", "knn_top1", "embedding_std", "embedding_rank",
            "feature_std", "feature_rank"} <= set(header)


@pytest.mark.parametrize("name", ["all4one", "barlow_twins", "dino", "lejepa", "nnclr", "simclr", "swav"])
def test_every_method_trains_through_the_real_pretrain_path(name: str, curated: tuple[pa.Table, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning calls the after-step hook once per optimizer step; DINO exports its teacher."""
    import timm
    from safetensors.torch import load_file
    from test_ssl import TINY_ARGS

    from pas.ssl import METHODS

    seen: list[int] = []
    hook = METHODS[name].after_optimizer_step

    def recording_hook(self, backbone, progress):
        seen.append(progress.step)
        return hook(self, backbone, progress)

    monkeypatch.setattr(METHODS[name], "after_optimizer_step", recording_hook)
    manifest, root = curated
    cfg = PretrainConfig(method=name, backbone=TINY, image_size=32, epochs=1, batch_size=8, max_steps=3,
                         method_args={name: TINY_ARGS[name]})
    metrics = pretrain(manifest, root, cfg, tmp_path, seed=0)
    assert metrics["steps"] == 3 and np.isfinite(metrics["loss_last_epoch"])
    assert seen == [1, 2, 3]
    card = json.loads((tmp_path / "model_card.json").read_text())
    state = load_file(str(tmp_path / "backbone.safetensors"))
    if name == "dino":
        assert card["exported"] == "ema teacher" and metrics["terms"]["teacher_temp"] == pytest.approx(0.04)
    elif name == "all4one":
        assert card["exported"] == "online backbone" and set(metrics["terms"]) == {"centroid", "neighbour", "feature"}
    elif name == "lejepa":
        assert set(metrics["terms"]) == {"invariance", "sigreg"} and metrics["heldout_images"] == 3  # 10% of 32
        assert card["images"] == 29 and np.isfinite(metrics["label_free_score"])
    else:
        assert card["exported"] == "online backbone" and "label_free_score" not in metrics
    timm.create_model(TINY, num_classes=0).load_state_dict(state, strict=True)


def test_pretrain_rejects_a_batch_larger_than_the_data(curated: tuple[pa.Table, Path], tmp_path: Path) -> None:
    manifest, root = curated
    with pytest.raises(ConfigError, match="pretrain.batch_size"):
        pretrain(manifest, root, PretrainConfig(backbone=TINY, batch_size=64), tmp_path, seed=0)


def test_lars_with_accumulation_and_a_weight_decay_schedule(curated: tuple[pa.Table, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """2 batches per optimizer step; LARS adapts kernels only; weight decay follows its cosine to the end value."""
    from timm.optim import Lars

    from pas.ssl.module import PretrainModule, cosine_between

    batches: list[int] = []
    steps: list[tuple[int, type, list[float], list[bool]]] = []
    training_step, optimizer_step = PretrainModule.training_step, PretrainModule.optimizer_step

    def recording_training_step(self, batch, index):
        batches.append(self.trainer.global_step)
        return training_step(self, batch, index)

    def recording_optimizer_step(self, epoch, batch_idx, optimizer, closure=None):
        optimizer_step(self, epoch, batch_idx, optimizer, closure)
        groups = optimizer.param_groups
        steps.append((self.trainer.global_step, type(optimizer), [g["weight_decay"] for g in groups],
                      [g["always_adapt"] for g in groups]))

    monkeypatch.setattr(PretrainModule, "training_step", recording_training_step)
    monkeypatch.setattr(PretrainModule, "optimizer_step", recording_optimizer_step)
    manifest, root = curated
    cfg = PretrainConfig(backbone=TINY, image_size=32, epochs=3, batch_size=8, optimizer="lars", lr=0.3,
                         weight_decay=0.04, weight_decay_end=0.4, accumulate_grad_batches=2)
    metrics = pretrain(manifest, root, cfg, tmp_path, seed=0)

    assert metrics["steps"] == 6 and len(batches) == 12           # 4 batches per epoch -> 2 optimizer steps
    assert batches == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert np.isfinite(metrics["loss_last_epoch"])
    for step, (global_step, kind, decays, adapts) in enumerate(steps):
        assert issubclass(kind, Lars) and global_step == step     # global_step counts optimizer steps only
        expected = cosine_between(0.04, 0.4, step, 6)
        assert sorted(set(decays)) == [0.0, pytest.approx(expected)]
        assert all(adapt == (decay > 0) for decay, adapt in zip(decays, adapts))   # no trust ratio on biases/norms
    assert steps[0][2].count(0.0) and max(steps[-1][2]) > max(steps[0][2])
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert card["derived"]["effective_batch_size"] == 16


def test_cosine_between_runs_from_start_to_end() -> None:
    from pas.ssl.module import cosine_between

    assert cosine_between(0.04, 0.4, 0, 10) == pytest.approx(0.04)
    assert cosine_between(0.04, 0.4, 5, 10) == pytest.approx(0.22)
    assert cosine_between(0.04, 0.4, 10, 10) == pytest.approx(0.4)
    assert cosine_between(0.04, 0.4, 20, 10) == pytest.approx(0.4)


def test_the_label_free_score_is_deterministic_leaves_the_networks_alone_and_reads_the_data(
        curated: tuple[pa.Table, Path]):
    """LeJEPA's held-out loss: the same networks score the same images the same twice, without changing a weight
    or a batch-norm statistic, and another held-out sample scores differently."""
    from test_ssl import TINY_ARGS, train_steps

    from pas.ssl import get_method, method_args
    from pas.ssl.backbones import create_backbone
    from pas.ssl.data import ViewStream, split_heldout
    from pas.ssl.monitor import score_heldout

    manifest, root = curated
    train, held = split_heldout(manifest, 8, seed=0)
    assert held.num_rows == 8 and train.num_rows == 24
    assert set(held.column("key").to_pylist()) == set(split_heldout(manifest.take(list(range(31, -1, -1))), 8, 0)[1]
                                                      .column("key").to_pylist())   # row order does not matter
    torch.manual_seed(0)
    backbone, dim = create_backbone(TINY)
    args = method_args("lejepa", TINY_ARGS["lejepa"], "x")
    method = get_method("lejepa")(backbone, dim, args)
    transforms = method.view_transforms(args, 32)

    def views_of(table):
        items = list(ViewStream(table, root, transforms, seed=0))
        return [torch.stack([item["views"][v] for item in items]) for v in range(len(transforms))]

    held_views = views_of(held)
    before = score_heldout(method, backbone, held_views)
    weights = {k: v.clone() for k, v in backbone.state_dict().items()}
    assert before == score_heldout(method, backbone, held_views)
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in weights.items())   # BN statistics untouched
    assert score_heldout(method, backbone, views_of(split_heldout(manifest, 8, seed=1)[1])) != before
    train_steps(backbone, method, views_of(train), steps=3)
    assert score_heldout(method, backbone, held_views) != before              # it follows the trained networks
