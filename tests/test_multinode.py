"""Multi-node pretraining as a cluster launches it: two torchrun "nodes" of one CPU process each, on 127.0.0.1,
train through the real pretrain() / Lightning DDP path (gloo); the run sees a world of 2, each rank trains on its
half of the curated set, and the global batch is two per-device batches."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file
from test_pretrain import curated  # noqa: F401  (fixture)

from pas.core.config import ConfigError
from pas.ssl.pretrain import cluster_shape

RANK_SCRIPT = """
import json, sys
from pathlib import Path
import pyarrow.parquet as pq
import torch
torch.set_num_threads(1)
from pas.ssl.pretrain import PretrainConfig, pretrain
from pas.ssl.data import ViewStream
manifest, root, out = pq.read_table(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cfg = PretrainConfig(backbone="test_resnet", image_size=32, epochs=1, batch_size=4, warmup_epochs=0)
metrics = pretrain(manifest, root, cfg, out, seed=0)
rank = torch.distributed.get_rank()
stream = ViewStream(manifest, root, [lambda image: torch.zeros(1)], seed=0)
stream.set_rank(rank, torch.distributed.get_world_size())   # as StreamSync does inside the trainer
keys = [item["key"] for item in stream]          # this rank's share of the stream
(out / f"rank{rank}.json").write_text(json.dumps({"keys": keys, "world": torch.distributed.get_world_size()}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cluster_shape_follows_torchrun_slurm_or_the_setting():
    assert cluster_shape("cpu", 1, {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}) == (2, 2)
    assert cluster_shape("cuda", 8, {"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}) == (8, 2)
    assert cluster_shape("cuda", 8, {"SLURM_NNODES": "4"}) == (8, 4)
    assert cluster_shape("cpu", 1, {}) == (1, 1)
    with pytest.raises(ConfigError, match="PAS_NUM_NODES='two' is not a positive integer"):
        cluster_shape("cpu", 1, {"PAS_NUM_NODES": "two"})


@pytest.mark.slow
def test_two_torchrun_nodes_split_the_data_and_train_one_global_batch(curated, tmp_path):  # noqa: F811
    manifest, root = curated
    pq.write_table(manifest, tmp_path / "manifest.parquet")
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    out, port = tmp_path / "out", _free_port()
    out.mkdir()
    env = {**os.environ, "PAS_DEVICE": "cpu", "PAS_NUM_WORKERS": "0", "PAS_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                               f"--node-rank={rank}", "--master-addr=127.0.0.1", f"--master-port={port}",
                               str(tmp_path / "rank.py"), str(tmp_path / "manifest.parquet"), str(root), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    shares = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [share["world"] for share in shares] == [2, 2]
    first, second = (set(share["keys"]) for share in shares)
    assert not first & second and first | second == set(manifest.column("key").to_pylist())   # split, none lost
    card = json.loads((out / "model_card.json").read_text())                                   # rank 0 writes it
    assert card["derived"]["world_size"] == 2 and card["derived"]["num_nodes"] == 2
    assert card["derived"]["effective_batch_size"] == 8                                        # 2 ranks x 4
    assert card["derived"]["steps_per_epoch"] == 32 // 2 // 4 and card["steps"] == 4           # each rank: 16 images
    assert load_file(out / "backbone.safetensors")
