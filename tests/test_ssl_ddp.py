"""Two CPU processes over gloo: the collective parts of the SSL losses give the global-batch answer, and the
curated stream is split between ranks without overlap or loss."""
from __future__ import annotations

import os
import socket

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import write_image_shards


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from pas.ssl.lejepa import random_directions, sigreg
    from pas.ssl.swav import sinkhorn

    torch.manual_seed(0)
    z, scores = torch.randn(64, 8), torch.randn(64, 16)                 # the same global batch on every rank
    mine = slice(rank * 32, (rank + 1) * 32)
    directions = random_directions(8, 32, step=5, device="cpu")
    result = {"sigreg": sigreg(z[mine], directions).item(), "codes": sinkhorn(scores[mine], 0.05, 3).numpy()}
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_sigreg_and_sinkhorn_over_two_ranks_equal_the_single_process_global_batch(tmp_path):
    mp.spawn(_collectives, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    from pas.ssl.lejepa import random_directions, sigreg
    from pas.ssl.swav import sinkhorn

    torch.manual_seed(0)
    z, scores = torch.randn(64, 8), torch.randn(64, 16)
    whole_sigreg = sigreg(z, random_directions(8, 32, step=5, device="cpu")).item()
    whole_codes = sinkhorn(scores, 0.05, 3).numpy()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert all(abs(r["sigreg"] - whole_sigreg) < 1e-4 * max(1.0, abs(whole_sigreg)) for r in ranks)
    assert np.allclose(np.concatenate([r["codes"] for r in ranks]), whole_codes, atol=1e-5)


def test_the_view_stream_splits_the_curated_set_between_ranks(tmp_path):
    from conftest import make_image
    from pas.ssl.augment import eval_transform
    from pas.ssl.data import ViewStream

    shards = [[(f"k{s}{i:02d}", make_image(100 * s + i, 32)) for i in range(10)] for s in range(4)]
    manifest = pa.Table.from_pylist(write_image_shards(tmp_path, shards))
    seen = []
    for rank in range(2):
        stream = ViewStream(manifest, tmp_path, [eval_transform(16)], seed=0)
        stream.set_rank(rank, 2)
        seen.append([item["key"] for item in stream])
    assert len(seen[0]) == len(seen[1]) == 20                            # equal shares: every rank steps together
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == 40
