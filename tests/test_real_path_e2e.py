"""The real recipe rehearsed end to end through a local Hugging Face hub (slow, in a temporary copy).

`dvc repro` with `models.generator: stabilityai/sdxl-turbo`, `models.clip: ViT-B-32/openai` and an ImageNet baseline
named by its timm id (`resnet18.a1_in1k`, weights: timm), every model served by tests/hf_hub with the real repos'
file layouts (small random weights; ViT-B-32 at full size, since open_clip takes its architecture from its own
config) to the real clients, unchanged, through HF_ENDPOINT. What a GPU run would do, less the GPU.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from hf_hub.repos import OPENAI_VIT_B_32, RESNET18_TIMM_NAME, SDXL_SINGLE_FILES, SDXL_TURBO, TIMM_RESNET18

from dvc_repo import copy_sources, ran, run, set_params

pytestmark = pytest.mark.slow

REAL = {
    "models.generator": SDXL_TURBO,
    "models.clip": "ViT-B-32/openai",
    "generate.resolution": 128,   # params win over the preset's 512 px: a tiny SDXL took ~40 s a 512 px image on 2 busy cores
    "size": 40, "concepts.count": 10,
    "sample_data.pool_animals": 200, "sample_data.downstream_train": 200, "sample_data.downstream_test": 100,
    "pool_index.source": "data/pool/animals",    # not the 2,000 packaged out-of-domain images: ViT-B-32 on a CPU
    # random ViT-B-32 weights put the silhouettes and the tiny SDXL's images within cosine 0.95 of each other: only
    # exact copies count as duplicates here (the rehearsal is of the model path, not of curation quality)
    "dedup.threshold": 1.0, "dedup.eval_threshold": 1.0, "dedup.copy_threshold": 0.0,
    "pretrain.backbone": "resnet18", "pretrain.epochs": 1, "pretrain.batch_size": 16,
    "finetune.inits": [{"name": "pas", "arch": "pretrain", "weights": "pretrain"},
                       {"name": "random", "arch": "pretrain", "weights": "random"},
                       {"name": "imagenet", "arch": RESNET18_TIMM_NAME, "weights": "timm"}],
    "finetune.protocols": ["linear", "knn"], "finetune.linear.epochs": 20, "finetune.elfis.protocols": [],
}


def clip_embeddings(model: torch.nn.Module, pixels: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1).numpy()


def test_the_real_recipe_runs_through_a_hub_and_nothing_after_models_touches_the_network(hf_hub, tmp_path):
    for repo_id in (SDXL_TURBO, OPENAI_VIT_B_32, TIMM_RESNET18):
        hf_hub.add(repo_id)
    repo = copy_sources(tmp_path / "repo")
    set_params(repo, REAL)
    run("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm real", repo)

    # 1. the models stage resolves and pins every model a run needs, fetching only what each library loads
    run("dvc repro models", repo, env=hf_hub.env)
    fetched = hf_hub.fetched(SDXL_TURBO)
    assert not set(SDXL_SINGLE_FILES) & set(fetched), fetched                     # no root-level checkpoints
    weights = [f for f in fetched if f.endswith(".safetensors")]
    assert weights and all(".fp16." in f for f in weights), weights                # the fp16 variant only
    assert hf_hub.fetched(OPENAI_VIT_B_32) == ["open_clip_model.safetensors"]
    lock = json.loads((repo / "models/lock.json").read_text())
    for entry, repo_id in ((lock["generator"], SDXL_TURBO), (lock["clip"], OPENAI_VIT_B_32),
                           (lock["baselines"]["imagenet"], TIMM_RESNET18)):
        assert entry["revision"] == hf_hub.repo(repo_id).sha and len(entry["sha256"]) == 64, entry
    assert lock["generator"]["variant"] == "fp16" and lock["clip"]["quick_gelu"] is True

    # 2. the rest of the DAG with the hub unreachable and an empty Hugging Face cache: everything came through models/
    served = len(hf_hub.requests)
    offline = {**hf_hub.env, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "no-hf-home"),
               "HF_HUB_CACHE": str(tmp_path / "no-hf-home" / "hub"), "HF_HUB_OFFLINE": "1"}
    proc = run("dvc repro", repo, env=offline)
    stages = set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    assert ran(proc) == stages - {"models"} and len(hf_hub.requests) == served
    generate = json.loads((repo / "metrics/generate.json").read_text())       # the preset reached the pipeline call
    assert (generate["sampling_steps"], generate["sampling_guidance"], generate["sampling_resolution"]) == (1, 0.0, 128)
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert evaluation["animal_shapes"]["imagenet"]["linear"]["top1"] >= 0          # the timm baseline was evaluated
    finetune_index = json.loads((repo / "data/finetune/index.json").read_text())
    assert finetune_index["inits"]["imagenet"]["source"]["revision"] == hf_hub.repo(TIMM_RESNET18).sha

    # 3. the saved CLIP embeds as the QuickGELU model holding the served weights, not as a GELU one
    import open_clip
    from hf_hub.repos import reference_openai_clip

    from pas.models.clip import ClipEncoder

    encoder = ClipEncoder(repo / "models/clip")
    pixels = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    saved = encoder.encode_pixels(pixels)
    reference = reference_openai_clip(hf_hub.root / OPENAI_VIT_B_32)
    np.testing.assert_allclose(saved, clip_embeddings(reference, pixels), atol=1e-5)        # measured 8e-8
    gelu = open_clip.create_model("ViT-B-32", pretrained=None)
    gelu.load_state_dict(reference.state_dict())
    assert np.abs(saved - clip_embeddings(gelu.eval(), pixels)).max() > 1e-4     # GELU: 7.6e-4 on random weights

    # 4. changing only models.clip downloads and renders nothing again: the generator's bytes and hash are the same
    hf_hub.clear_log()
    set_params(repo, {"models.clip": "tiny://clip"})
    proc = run("dvc repro", repo, env=hf_hub.env)
    assert "models" in ran(proc) and hf_hub.fetched() == []
    relock = json.loads((repo / "models/lock.json").read_text())
    assert relock["generator"]["sha256"] == lock["generator"]["sha256"]
    if "generate" in ran(proc):                  # DVC reruns it only if a dep changed: then it renders nothing
        assert "generate: 0 images rendered" in proc.stdout + proc.stderr
