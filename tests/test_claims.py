"""README claims that had no test of their own: model pinning in models/lock.json, the hub path's offline error,
pretraining metrics in MLflow, `precision: auto`, throughput switches that leave images unchanged, `pas export` as a
command, and the pool index's metrics."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_pretrain import TINY, cpu, curated, labeled  # noqa: F401  (fixtures)

from conftest import REPO
from pas.core.config import ConfigError
from pas.models.registry import content_hash, read_entry, resolve
from pas.sources.generate import GenerateConfig, generate, plan_jobs

CONCEPTS = [{"name": "cat", "prompts": ["a cat"]}, {"name": "dog", "prompts": ["a dog"]}]


def _models_stage(tmp_path, generator, clip) -> dict:
    """Run stages/models.py as dvc would, with models.generator / models.clip set; return the lock."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["models"].update(generator=str(generator), clip=str(clip))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "models.py"), "--params", "params.yaml",
                           "--generator", "models/generator", "--clip", "models/clip", "--baselines", "models/baselines",
                           "--lock", "models/lock.json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((tmp_path / "models" / "lock.json").read_text())


def test_local_model_folders_are_pinned_by_their_content_in_the_lock(tmp_path, tiny_models):
    mine = tmp_path / "mine"
    shutil.copytree(tiny_models["generator"], mine / "generator")
    shutil.copytree(tiny_models["clip"], mine / "clip")
    (tmp_path / "run1").mkdir()
    lock = _models_stage(tmp_path / "run1", mine / "generator", mine / "clip")
    for role in ("generator", "clip"):
        entry = lock[role]
        assert entry["source"] == "local" and entry["revision"] == "content" and entry["path"] == f"models/{role}"
        assert entry["sha256"] == content_hash(mine / role) == read_entry(tmp_path / "run1" / "models" / role)["sha256"]
    weights = next((mine / "clip").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))   # one bit of one file
    (tmp_path / "run2").mkdir()
    again = _models_stage(tmp_path / "run2", mine / "generator", mine / "clip")
    assert again["clip"]["sha256"] != lock["clip"]["sha256"] and again["generator"]["sha256"] == lock["generator"]["sha256"]


@pytest.mark.parametrize(("role", "name", "message"), [
    ("generator", "sdxl-turbo", r"models.generator='sdxl-turbo': stabilityai/sdxl-turbo is not in the Hugging Face "
                                r"cache \(.*\) and HF_HUB_OFFLINE=1 forbids downloading it; fill the cache"),
    ("generator", "someone/some-model", r"models.generator='someone/some-model': someone/some-model is not in the "
                                        r"Hugging Face cache"),
    ("clip", "hf-hub:someone/some-clip", r"models.clip='hf-hub:someone/some-clip': someone/some-clip is not in the "
                                         r"Hugging Face cache .* or unset HF_HUB_OFFLINE and set HF_ENDPOINT"),
])
def test_the_hub_path_offline_fails_with_one_line_naming_the_model(role, name, message, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from pas.models.fetch import fetch_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match=message) as err:
        resolve(role, name, tmp_path / role, fetch_hub)
    assert "\n" not in str(err.value)


def test_pretraining_metrics_land_in_mlflow(curated, labeled, tmp_path):  # noqa: F811
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    from pas.ssl.pretrain import PretrainConfig, pretrain

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = MLFlowLogger(experiment_name="pas-test", tracking_uri=uri, run_name="pretrain")
    manifest, root = curated
    cfg = PretrainConfig(backbone=TINY, image_size=32, epochs=2, batch_size=8, max_steps=6)
    metrics = pretrain(manifest, root, cfg, tmp_path / "out", seed=0, loggers=[logger], knn_val=labeled)
    client = MlflowClient(tracking_uri=uri)
    logged = client.get_run(logger.run_id).data.metrics
    assert {"loss", "lr", "embedding_std", "embedding_rank", "knn_top1"} <= set(logged)
    history = client.get_metric_history(logger.run_id, "loss")
    assert history and all(np.isfinite(m.value) and 0 < m.step <= 6 for m in history)       # per-step losses
    epochs = client.get_metric_history(logger.run_id, "knn_top1")
    assert len(epochs) == 2 and epochs[-1].value == pytest.approx(metrics["knn_top1"])      # one per epoch


def test_precision_auto_is_32_on_cpu_and_follows_bf16_support_on_gpus(monkeypatch):
    from pas.ssl.pretrain import trainer_precision

    assert trainer_precision("auto", "cpu") == "32-true"
    assert trainer_precision("16-mixed", "cpu") == "16-mixed"                 # an explicit choice is kept
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert trainer_precision("auto", "cuda") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert trainer_precision("auto", "cuda") == "16-mixed"


def _shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("generated-*.tar"))}


@pytest.mark.parametrize("switches", [{"PAS_ATTENTION_SLICING": "1", "PAS_VAE_SLICING": "1"}, {"PAS_COMPILE": "1"}])
def test_throughput_switches_leave_the_generated_images_unchanged(switches, tiny_models, tmp_path, monkeypatch):
    model = read_entry(tiny_models["generator"])
    jobs = plan_jobs(CONCEPTS, 4, 0)
    cfg = GenerateConfig(steps=2, batch_size=4, shard_size=4)
    for name in ("PAS_COMPILE", "PAS_ATTENTION_SLICING", "PAS_VAE_SLICING", "PAS_RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    generate(tiny_models["generator"], model, jobs, cfg, tmp_path / "plain")
    for name, value in switches.items():
        monkeypatch.setenv(name, value)
    generate(tiny_models["generator"], model, jobs, cfg, tmp_path / "switched")
    plain, switched = _shard_bytes(tmp_path / "plain"), _shard_bytes(tmp_path / "switched")
    if "PAS_COMPILE" in switches:   # compiled kernels may round differently: the same images to the JPEG's eye
        from pas.core.shards import decode_image, read_shard

        pixels = lambda folder: np.stack([np.asarray(decode_image(jpeg), np.int16) for shard in  # noqa: E731
                                          sorted(folder.glob("*.tar")) for _, jpeg, _ in read_shard(shard)])
        assert np.abs(pixels(tmp_path / "plain") - pixels(tmp_path / "switched")).max() <= 2
    else:
        assert switched == plain


def test_pas_export_runs_as_a_command(tmp_path):
    from conftest import make_image, write_image_shards

    rows = write_image_shards(tmp_path, [[(f"k{i}", make_image(i)) for i in range(4)]])
    import pyarrow as pa

    table = pa.Table.from_pylist([{**row, "concept": "cat" if i % 2 else "dog", "source": "generated"}
                                  for i, row in enumerate(rows)])
    pq.write_table(table, tmp_path / "manifest.parquet")
    pas = shutil.which("pas", path=os.path.dirname(sys.executable)) or "pas"
    done = subprocess.run([pas, "export", "--curated", str(tmp_path / "manifest.parquet"), "--out",
                           str(tmp_path / "out"), "--formats", "imagefolder"], capture_output=True, text=True,
                          cwd=tmp_path)                              # shard paths are relative to the repository
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out" / "imagefolder").iterdir() if p.is_dir()) == ["cat", "dog"]
    assert sum(1 for _ in (tmp_path / "out" / "imagefolder").rglob("*.jpg")) == 4
    bad = subprocess.run([pas, "export", "--curated", str(tmp_path / "manifest.parquet"), "--out",
                          str(tmp_path / "bad"), "--formats", "zip"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "zip" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_pool_index_metrics_count_skips_by_reason_and_record_the_recall(tmp_path, image_factory, tiny_models):
    from test_pool_retrieve import make_mixed_pool

    from pas.sources.pool_index import PoolIndexConfig, index_pool

    make_mixed_pool(tmp_path / "pool", image_factory)
    metrics = index_pool(PoolIndexConfig(source=str(tmp_path / "pool"), chunk_size=5), tiny_models["clip"],
                         tmp_path / "index", seed=0)
    table = pq.read_table(tmp_path / "index" / "files.parquet")
    assert metrics["indexed"] == table.num_rows and metrics["items"] == metrics["indexed"] + metrics["skipped"]
    assert metrics["reasons"] == {"ok": 14, "converted_CMYK": 1, "undecodable": 2, "too_small": 1,
                                  "missing_file": 1, "duplicate_path": 1}          # make_mixed_pool's planted faults
    assert metrics["skipped"] == 5 and metrics["indexed"] == 15                      # a converted CMYK is usable
    assert metrics["index"] == "flat" and metrics["recall_at_10"] == 1.0 and metrics["recall_met"] is True
    stored = json.loads((tmp_path / "index" / "index.json").read_text())
    assert stored["recall_at_10"] == metrics["recall_at_10"] and stored["target_recall"] == 0.95
