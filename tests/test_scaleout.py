"""Ray scale-out on a real local Ray cluster: generate, the pool's embedding and embed through Ray actors write
what the single-process path writes, byte for byte, and a worker killed mid-run is restarted with no key lost or
written twice."""
import os
import signal
import threading
import time
from functools import partial

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import torch

from pas.core.config import PasError
from pas.core.scaleout import actor_slots, ray_address
from pas.core.shards import read_shard
from pas.curation.embed import candidate_rows, embed_all, fresh_slices
from pas.models.registry import read_entry
from pas.sources.generate import GenerateConfig, generate, plan_jobs
from pas.sources.pool_index import PoolIndexConfig, embed_pool, load_encoder

CONCEPTS = [{"name": "cat", "prompts": ["a cat", "a cat asleep"]}, {"name": "dog", "prompts": ["a dog"]}]
FAST = GenerateConfig(steps=1, batch_size=2, shard_size=2)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance of 2 CPUs for the module; actors get one torch thread, as the baseline below does."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PAS_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def one_thread(monkeypatch):
    """The single-process baseline with the actors' thread count (CPU results depend on it): PAS_NUM_THREADS, which
    the stages apply where torch runs, as the actors' runtime env sets it."""
    monkeypatch.setenv("PAS_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("generated-*.tar"))}


def test_ray_address_setting_is_checked(monkeypatch):
    monkeypatch.delenv("PAS_RAY_ADDRESS", raising=False)
    assert ray_address() is None
    monkeypatch.setenv("PAS_RAY_ADDRESS", "ray://10.0.0.1:10001")
    assert ray_address() == "ray://10.0.0.1:10001"
    monkeypatch.setenv("PAS_RAY_ADDRESS", "cluster-please")
    with pytest.raises(PasError, match=r"PAS_RAY_ADDRESS='cluster-please' is not a Ray address; use local, auto"):
        ray_address()


def test_one_actor_per_gpu_else_per_cpu_never_more_than_tasks(monkeypatch):
    monkeypatch.delenv("PAS_RAY_ACTORS", raising=False)
    assert actor_slots({"CPU": 128, "GPU": 16}, 100) == (16, {"num_gpus": 1, "num_cpus": 1})   # 2 nodes x 8 GPUs
    assert actor_slots({"CPU": 8}, 100) == (8, {"num_cpus": 1})
    assert actor_slots({"CPU": 8}, 3) == (3, {"num_cpus": 1})
    monkeypatch.setenv("PAS_RAY_ACTORS", "2")
    assert actor_slots({"CPU": 8}, None)[0] == 2
    monkeypatch.setenv("PAS_RAY_ACTORS", "0")
    with pytest.raises(PasError, match="PAS_RAY_ACTORS='0' is not a positive integer"):
        actor_slots({"CPU": 8}, 4)


def test_fresh_slices_keep_every_clip_batch_whole():
    known = {1, 2, 7}
    slices = fresh_slices(12, known, 4)
    assert [list(s) for s in slices] == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11]]
    assert [sum(i not in known for i in s) for s in slices] == [4, 4, 1]


def test_generate_through_ray_writes_the_single_process_bytes(ray_cluster, one_thread, tiny_models, tmp_path,
                                                              monkeypatch):
    model = read_entry(tiny_models["generator"])
    jobs = plan_jobs(CONCEPTS, 9, 0)
    monkeypatch.delenv("PAS_RAY_ADDRESS", raising=False)
    local = generate(tiny_models["generator"], model, jobs, FAST, tmp_path / "local")
    monkeypatch.setenv("PAS_RAY_ADDRESS", "local")
    on_ray = generate(tiny_models["generator"], model, jobs, FAST, tmp_path / "ray")
    assert local["engine"] == "local" and on_ray["engine"] == "ray" and on_ray["images_rendered"] == 9
    assert shard_bytes(tmp_path / "ray") == shard_bytes(tmp_path / "local") and len(shard_bytes(tmp_path / "ray")) == 5
    assert (pq.read_table(tmp_path / "ray" / "manifest.parquet").to_pylist()
            == pq.read_table(tmp_path / "local" / "manifest.parquet").to_pylist())


def _actor_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any("_Holder" in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_a_ray_worker_killed_during_generate_is_retried_and_every_key_lands_once(ray_cluster, one_thread,
                                                                                tiny_models, tmp_path, monkeypatch):
    model = read_entry(tiny_models["generator"])
    jobs = plan_jobs(CONCEPTS, 40, 0)
    monkeypatch.delenv("PAS_RAY_ADDRESS", raising=False)
    generate(tiny_models["generator"], model, jobs, FAST, tmp_path / "local")
    monkeypatch.setenv("PAS_RAY_ADDRESS", "local")
    out, result, errors = tmp_path / "ray", {}, []

    def run():
        try:
            result.update(generate(tiny_models["generator"], model, jobs, FAST, out))
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)

    runner = threading.Thread(target=run)
    runner.start()
    killed, deadline = [], time.monotonic() + 120
    while not killed and runner.is_alive() and time.monotonic() < deadline:
        if out.exists() and any(out.glob("generated-*.tar")):          # the actors are rendering now
            for process in _actor_processes()[:1]:
                os.kill(process.pid, signal.SIGKILL)
                killed.append(process.pid)
        time.sleep(0.05)
    runner.join(timeout=300)
    assert killed, "no Ray actor was found to kill while generate ran"
    assert not errors, errors
    assert result["images"] == 40 and result["shards"] == 20
    keys = [key for shard in sorted(out.glob("generated-*.tar")) for key, _, _ in read_shard(shard)]
    assert keys == sorted(set(keys)) and len(keys) == 40                       # each key once
    assert shard_bytes(out) == shard_bytes(tmp_path / "local")


def test_pool_embedding_through_ray_writes_the_single_process_chunks(ray_cluster, one_thread, tiny_models,
                                                                     image_factory, tmp_path, monkeypatch):
    (tmp_path / "pool").mkdir()
    for i in range(23):
        image_factory(300 + i).save(tmp_path / "pool" / f"img{i:02d}.png")
    cfg = PoolIndexConfig(source=str(tmp_path / "pool"), chunk_size=5)
    make = partial(load_encoder, str(tiny_models["clip"]), cfg.batch_size)
    monkeypatch.delenv("PAS_RAY_ADDRESS", raising=False)
    assert embed_pool(tmp_path / "pool", make, cfg, tmp_path / "local", "sha") == 5
    monkeypatch.setenv("PAS_RAY_ADDRESS", "local")
    assert embed_pool(tmp_path / "pool", make, cfg, tmp_path / "ray", "sha") == 5
    for name in sorted(p.name for p in (tmp_path / "local").iterdir()):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_embed_through_ray_equals_one_pass_including_reused_pool_vectors(ray_cluster, one_thread, tiny_models,
                                                                          tmp_path, monkeypatch):
    model = read_entry(tiny_models["generator"])
    monkeypatch.delenv("PAS_RAY_ADDRESS", raising=False)
    generate(tiny_models["generator"], model, plan_jobs(CONCEPTS, 150, 0), GenerateConfig(steps=1, batch_size=16,
                                                                                          shard_size=32), tmp_path)
    rows = candidate_rows([(pq.read_table(tmp_path / "manifest.parquet"), tmp_path)])
    known = {i: np.full(64, i / 1000, np.float32) for i in (0, 5, 77, 149)}  # as if reused from the pool
    local, local_stats = embed_all(rows, tiny_models["clip"], known)
    monkeypatch.setenv("PAS_RAY_ADDRESS", "local")
    on_ray, ray_stats = embed_all(rows, tiny_models["clip"], known, batches_per_task=1)   # 3 tasks of 64 fresh
    assert on_ray.shape == local.shape == (150, 64)
    assert np.array_equal(on_ray, local) and ray_stats == local_stats
    assert np.array_equal(on_ray[77], known[77])
