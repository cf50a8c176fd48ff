"""The SSL recipes as the official code runs them (one test per deviation the paper-claim issue listed), equal compute
by pretrain.budget, and pretraining on the datasets PaS released (HF parquet), WebDataset shards and ImageFolders."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_pretrain import TINY, curated  # noqa: F401  (fixture)
from test_ssl import TINY_ARGS, one_thread  # noqa: F401  (fixture)
from timm.layers import DropPath
from torchvision.transforms import v2

from pas.core.config import ConfigError, build
from pas.ssl import METHODS, method_args
from pas.ssl.all4one import All4One
from pas.ssl.backbones import create_backbone
from pas.ssl.datasets import resolve_dataset
from pas.ssl.dino import DINO
from pas.ssl.module import PretrainModule, clip_per_parameter, make_optimizer, param_groups
from pas.ssl.pretrain import PretrainConfig, pretrain, training_length
from pas.transfer.config import FullConfig
from pas.transfer.fulltune import random_resized_crop


@pytest.fixture(autouse=True)
def cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAS_DEVICE", "cpu")
    monkeypatch.setenv("PAS_NUM_WORKERS", "0")


def test_dino_clips_each_parameter_not_the_global_norm():
    big, small = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    big.grad, small.grad = torch.full((4,), 3.0), torch.full((4,), 0.5)        # norms 6 and 1
    clip_per_parameter([big, small], 3.0)
    assert float(big.grad.norm()) == pytest.approx(3.0, rel=1e-5)               # scaled to 3 on its own
    assert torch.equal(small.grad, torch.full((4,), 0.5))                       # a global clip would shrink it too
    assert DINO.grad_clip_per_parameter and not any(
        cls.grad_clip_per_parameter for name, cls in METHODS.items() if name != "dino")

    backbone, dim = create_backbone(TINY)
    dino = DINO(backbone, dim, method_args("dino", TINY_ARGS["dino"], "t"))
    module = PretrainModule(backbone, dino, PretrainConfig().optimizer_config(), 0, 10, 5)
    trained = [p for p in module.parameters() if p.requires_grad]
    for i, p in enumerate(trained):      # every other tensor's gradient has norm 1: below the cap, it must stay
        p.grad = torch.full_like(p, 10.0) if i % 2 else torch.full_like(p, 1.0 / p.numel() ** 0.5)
    module.configure_gradient_clipping(optimizer=None)
    norms = [float(p.grad.norm()) for p in trained]
    assert all(n == pytest.approx(3.0, rel=1e-4) for n in norms[1::2])         # each large one capped at 3 alone
    assert all(n == pytest.approx(1.0, rel=1e-4) for n in norms[0::2])         # a global clip would shrink these


def test_dino_student_has_drop_path_and_its_teacher_none():
    args = method_args("dino", TINY_ARGS["dino"], "t")
    assert args.drop_path_rate == 0.1                                            # main_dino.py --drop_path_rate
    backbone, dim = create_backbone(TINY, "random", **DINO.backbone_kwargs(args))
    dino = DINO(backbone, dim, args)
    student = [m.drop_prob for m in backbone.modules() if isinstance(m, DropPath)]
    teacher = [m.drop_prob for m in dino.teacher_backbone.modules() if isinstance(m, DropPath)]
    assert student and max(student) == pytest.approx(0.1) and len(teacher) == len(student)
    assert set(teacher) == {0.0}
    assert [m for m in create_backbone(TINY)[0].modules() if isinstance(m, DropPath)] == []   # other methods: none


def test_lr_scales_linearly_with_the_global_batch():
    cfg = PretrainConfig()
    assert (cfg.lr, cfg.lr_scaling) == (0.004, "linear")
    assert cfg.effective_lr(64) == pytest.approx(0.001) and cfg.effective_lr(1024) == pytest.approx(0.016)
    assert cfg.optimizer_config(512).lr == pytest.approx(0.008)
    flat = build(PretrainConfig, {"lr_scaling": "none", "lr": 0.3}, "pretrain")
    assert flat.effective_lr(4096) == 0.3


def test_lars_uses_eta_002_and_clips_the_adaptive_lr():
    cfg = build(PretrainConfig, {"optimizer": "lars", "lr": 1.0}, "pretrain").optimizer_config(256)
    layer = torch.nn.Linear(8, 8)
    optimizer = make_optimizer(param_groups(layer, 1e-5, cfg.lr), cfg)
    assert {(g["trust_coeff"], g["trust_clip"]) for g in optimizer.param_groups} == {(0.02, True)}
    # with clip_lr, an adaptive lr above the global one is capped: the step equals plain SGD's lr x grad
    weight = layer.weight
    before = weight.detach().clone()
    layer.weight.grad = torch.full_like(weight, 1e-6)                             # tiny gradient: huge trust ratio
    layer.bias.grad = torch.zeros_like(layer.bias)
    optimizer.step()
    step = (before - weight.detach())
    assert torch.allclose(step, torch.full_like(step, 1e-6) + 1e-5 * before, rtol=0, atol=1e-7)


def test_all4one_blurs_at_imagenet_size_not_at_cifar_size():
    args = method_args("all4one", None, "t")
    view1, view2 = All4One.view_transforms(args, 224)
    assert (view1.blur, view2.blur) == (1.0, 0.1) and (view1.solarize, view2.solarize) == (0, 0.2)
    assert [v.blur for v in All4One.view_transforms(args, 32)] == [0, 0]


def test_224_px_fine_tunes_use_random_resized_crops():
    assert FullConfig().augmentation(224) == "random_resized_crop" and FullConfig().augmentation(64) == "pad_crop"
    assert FullConfig(augment="pad_crop").augmentation(224) == "pad_crop"
    ramp = torch.linspace(0, 1, 64).repeat(64, 1)
    batch = torch.stack([torch.stack([ramp, ramp.T, ramp * ramp.T])] * 8)     # (8, 3, 64, 64), no two crops alike
    out = random_resized_crop(batch, torch.Generator().manual_seed(0))
    again = random_resized_crop(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and torch.equal(out, again)
    assert sum(not torch.allclose(o, b, atol=1e-3) for o, b in zip(out, batch)) >= 6   # zoomed crops differ
    with pytest.raises(ConfigError, match=r"finetune.full.augment='cifar'.*random_resized_crop"):
        build(FullConfig, {"augment": "cifar"}, "finetune.full")


def test_budget_gives_every_size_the_same_images_seen(curated, tmp_path):  # noqa: F811
    cfg = build(PretrainConfig, {"budget": "1k", "batch_size": 8}, "pretrain")
    assert training_length(cfg, steps_per_epoch=4, global_batch=8) == (125, 32)    # ceil(1000 / 8) steps
    assert training_length(cfg, steps_per_epoch=40, global_batch=8) == (125, 4)
    assert training_length(build(PretrainConfig, {"epochs": 3}, "pretrain"), 4, 8) == (12, 3)

    manifest, root = curated
    seen = {}
    for rows in (16, 32):
        run = PretrainConfig(method="simclr", backbone=TINY, image_size=32, budget=48, batch_size=8, epochs=2,
                             warmup_epochs=1, method_args={"simclr": TINY_ARGS["simclr"]})
        metrics = pretrain(manifest.slice(0, rows), root, run, tmp_path / str(rows), seed=0)
        card = json.loads((tmp_path / str(rows) / "model_card.json").read_text())
        seen[rows] = (metrics["images_seen"], metrics["steps"], card["derived"]["epochs"], card["derived"]["budget"],
                      card["derived"]["warmup_steps"])
    # 2 vs 4 steps per pass, the same 6 steps; the warm-up is the same half of the run (2 nominal epochs)
    assert seen == {16: (48, 6, 3, 48, 3), 32: (48, 6, 2, 48, 3)}


def _pas_f_parquet(folder: Path, rows: int) -> Path:
    """A parquet in the PaS release format (pas-f): `image` {bytes, path} and `image_name`, 384 px JPEGs scaled down."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(rows):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        images.append({"bytes": buffer.getvalue(), "path": f"{i:06d}.jpg"})
    table = pa.table({"image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "image_name": [f"ramen_{i:06d}.jpg" for i in range(rows)]})
    path = folder / "train-00000-of-00001.parquet"
    pq.write_table(table, path)
    return path


def test_pretrain_on_a_released_pas_f_parquet(tmp_path):
    _pas_f_parquet(tmp_path / "pas-f" / "data", 24)
    manifest, record = resolve_dataset(str(tmp_path / "pas-f" / "data" / "*.parquet"), tmp_path / "unused")
    assert manifest.num_rows == 24 and record["format"] == "parquet" and record["images"] == 24
    assert record["name"] == "data" and len(record["md5"]) == 32
    cfg = PretrainConfig(method="simclr", backbone=TINY, image_size=32, epochs=1, batch_size=8,
                         method_args={"simclr": TINY_ARGS["simclr"]})
    metrics = pretrain(manifest, Path("/"), cfg, tmp_path / "out", seed=0, source=record)
    card = json.loads((tmp_path / "out" / "model_card.json").read_text())
    assert metrics["images"] == 24 and metrics["steps"] == 3
    assert card["dataset"] == record                                   # name, path, md5 of what was trained on
    # the same folder named directly finds the parquet files; the digest is of the data, not of the spelling
    _, again = resolve_dataset(str(tmp_path / "pas-f"), tmp_path / "unused")
    assert again["md5"] == record["md5"]
    _pas_f_parquet(tmp_path / "split" / "data", 4)
    (tmp_path / "split" / "data" / "train-00000-of-00001.parquet").rename(tmp_path / "split" / "data" / "test-0.parquet")
    with pytest.raises(ConfigError, match=r"holds evaluation splits too \(e.g. .*test-0.parquet\); name the training "):
        resolve_dataset(str(tmp_path / "split"), tmp_path / "unused")
    with pytest.raises(ConfigError, match=r"pretrain.dataset='' is not allowed"):
        build(PretrainConfig, {"dataset": ""}, "pretrain")


def test_webdataset_shards_and_image_folders_are_datasets_too(tmp_path):
    rng = np.random.default_rng(1)

    def png() -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    shards = tmp_path / "wds"
    shards.mkdir()
    for s in range(2):
        with tarfile.open(shards / f"shard-{s:04d}.tar", "w") as tar:
            for i in range(5):
                for name, data in ((f"s{s}i{i}.png", png()), (f"s{s}i{i}.txt", b"a caption")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    manifest, record = resolve_dataset(str(shards / "*.tar"), tmp_path)
    assert (manifest.num_rows, record["format"]) == (10, "webdataset")

    for cls in ("cat", "dog"):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "folder" / cls / f"{i}.png").write_bytes(png())      # the same file names in both classes
    folder, record = resolve_dataset(str(tmp_path / "folder"), tmp_path)
    assert (folder.num_rows, record["format"]) == (6, "imagefolder")
    assert sorted(folder.column("key").to_pylist())[:2] == ["cat/0.png", "cat/1.png"]

    from pas.ssl.data import ViewStream
    for table in (manifest, folder):
        stream = ViewStream(table, Path("/"), [v2.Compose([v2.PILToTensor()])], seed=0)
        items = list(stream)
        assert len(items) == table.num_rows and {i["views"][0].shape for i in items} == {(3, 20, 20)}

    with pytest.raises(ConfigError, match=r"pretrain.dataset='.*nothing-here' names no file or folder; use 'curated'"):
        resolve_dataset(str(tmp_path / "nothing-here"), tmp_path)
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.parquet").write_bytes(b"")
    (tmp_path / "mixed" / "b.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"matches .parquet, .txt files; use parquet files"):
        resolve_dataset(str(tmp_path / "mixed" / "*"), tmp_path)



def write_tar(path: Path, members: dict[str, bytes]) -> None:
    """A tar shard holding `members` (name -> bytes) in the given order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_keys_split_as_webdataset_does_and_are_unique_across_shards(tmp_path):
    """Keys split at the file name's first dot (so dotted folders are read); a sample's second image is not
    a second sample; the same key in two shards is one named error, not a silent merge."""
    def png(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (value, 0, 0)).save(buffer, format="PNG")
        return buffer.getvalue()

    shards = tmp_path / "wds"
    shards.mkdir()
    write_tar(shards / "a.tar", {"./v1.2/s0.png": png(10), "./v1.2/s0.jpg.json": b"{}", "./v1.2/s0.webp": png(99),
                                 "./v1.2/s1.seg.png": png(20)})
    manifest, _ = resolve_dataset(str(shards / "*.tar"), tmp_path)
    assert manifest.column("key").to_pylist() == ["./v1.2/s0", "./v1.2/s1"]

    from pas.ssl.data import ViewStream, shard_plan
    stream = ViewStream(manifest, Path("/"), [v2.Compose([v2.PILToTensor()])], seed=0)
    reds = sorted(int(item["views"][0][0, 0, 0]) for item in stream)
    assert reds == [10, 20]                                       # each sample's first image, none skipped

    write_tar(shards / "b.tar", {"./v1.2/s1.png": png(30)})
    with pytest.raises(ConfigError, match=r"sample key './v1.2/s1' is in both a.tar and b.tar; WebDataset keys must "
                                          r"be unique across shards"):
        resolve_dataset(str(shards / "*.tar"), tmp_path)
    twice = pa.table({"key": ["x", "y", "x"], "shard": ["a.tar", "b.tar", "b.tar"]})
    with pytest.raises(ValueError, match=r"^manifest lists key 'x' more than once$"):
        shard_plan(twice, shards)


def test_the_pretrain_stage_trains_on_a_released_parquet_and_logs_input_and_backbone(tmp_path):
    """`pretrain.dataset` = a pas-f parquet glob through the real stage: MLflow names the dataset (name, path,
    digest) and holds the timm folder as the run's `backbone/` artifact."""
    import subprocess
    import sys

    import yaml
    from conftest import REPO
    from mlflow.tracking import MlflowClient

    _pas_f_parquet(tmp_path / "pas-f" / "data", 24)
    spec = str(tmp_path / "pas-f" / "data" / "*.parquet")
    params = {"seed": 0, "pretrain": {"dataset": spec, "method": "simclr", "backbone": TINY, "image_size": 32,
                                      "epochs": 1, "batch_size": 8, "method_args": {"simclr": TINY_ARGS["simclr"]}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": uri, "PAS_DEVICE": "cpu", "PAS_NUM_WORKERS": "0"}
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "pretrain.py"), "--curated", "no-curated-set",
                           "--out", "out", "--checkpoints", "ck"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((tmp_path / "out" / "model_card.json").read_text())
    assert card["dataset"]["path"] == spec and card["dataset"]["images"] == 24 and card["images"] == 24
    client = MlflowClient(tracking_uri=uri)
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
              if r.data.tags.get("pas.stage") == "pretrain"]
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    assert (dataset.name, dataset.digest) == ("data", card["dataset"]["md5"])
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "backbone")}
    assert {"backbone/config.json", "backbone/model.safetensors", "backbone/README.md"} <= logged
