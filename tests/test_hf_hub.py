"""The local Hugging Face hub (tests/hf_hub) against the real clients: huggingface_hub, diffusers, open_clip, timm."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hf_hub.repos import OPENAI_VIT_B_32, SDXL_SINGLE_FILES, SDXL_TURBO, TIMM_RESNET18, reference_openai_clip

TOY = "acme/toy"


def _toy(hub, name: str = TOY, files: dict[str, bytes] | None = None) -> Path:
    """A small repo of one git file and one LFS file (written fresh: a test may change it)."""
    folder = hub.root / name
    for path, data in (files or {"config.json": b'{"a": 1}\n', "weights/model.safetensors": b"\x01" * 3000}).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----- the protocol, with huggingface_hub alone -----

def test_model_info_and_tree_describe_the_repo_as_the_hub_does(hf_hub):
    from huggingface_hub import HfApi

    folder = _toy(hf_hub, "acme/info")
    api = HfApi()
    info = api.model_info("acme/info")
    assert len(info.sha) == 40 and info.sha == hf_hub.repo("acme/info").sha
    assert sorted(s.rfilename for s in info.siblings) == ["config.json", "weights/model.safetensors"]
    assert all(s.size is None for s in info.siblings)  # sizes only with files_metadata=True, as on the Hub
    detailed = {s.rfilename: s for s in api.model_info("acme/info", revision=info.sha, files_metadata=True).siblings}
    assert detailed["weights/model.safetensors"].size == 3000
    assert detailed["weights/model.safetensors"].lfs.sha256 == _sha256(folder / "weights/model.safetensors")
    assert detailed["config.json"].lfs is None
    top = {(type(e).__name__, e.path) for e in api.list_repo_tree("acme/info")}
    assert top == {("RepoFolder", "weights"), ("RepoFile", "config.json")}
    assert api.list_repo_files("acme/info") == ["config.json", "weights/model.safetensors"]


def test_commit_sha_follows_the_content(hf_hub):
    from huggingface_hub import HfApi

    folder = _toy(hf_hub, "acme/sha")
    before = HfApi().model_info("acme/sha").sha
    assert HfApi().model_info("acme/sha").sha == before
    (folder / "config.json").write_bytes(b'{"a": 2}\n')
    assert HfApi().model_info("acme/sha").sha != before


def test_download_by_branch_and_by_sha_and_lfs_through_the_cdn(hf_hub):
    from huggingface_hub import hf_hub_download

    folder = _toy(hf_hub)
    sha = hf_hub.repo(TOY).sha
    path = hf_hub_download(TOY, "weights/model.safetensors")
    assert Path(path).read_bytes() == (folder / "weights/model.safetensors").read_bytes()
    assert f"/snapshots/{sha}/" in path and str(hf_hub.cache_dir) in path
    assert (hf_hub.cache_dir / "models--acme--toy" / "refs" / "main").read_text() == sha
    # LFS: metadata from the Hub's 302, bytes from the other origin (the "CDN"), as the real Hub serves them
    lfs = [r for r in hf_hub.requests if r.filename == "weights/model.safetensors"]
    assert [(r.method, r.status, r.path.split("/")[1]) for r in lfs] == [("HEAD", 302, "acme"), ("GET", 200, "cdn")]
    assert Path(hf_hub_download(TOY, "config.json", revision=sha)).read_bytes() == b'{"a": 1}\n'
    assert hf_hub.fetched(TOY) == ["config.json", "weights/model.safetensors"]


def test_missing_repo_file_and_revision_raise_the_clients_errors(hf_hub):
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    _toy(hf_hub)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("nobody/nothing", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("nobody/nothing")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("nobody/nothing")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(TOY, "missing.safetensors")
    # the client caches the miss under the commit the 404 named
    assert (hf_hub.cache_dir / "models--acme--toy" / ".no_exist" / hf_hub.repo(TOY).sha / "missing.safetensors").exists()
    for revision in ("v9", "refs/pr/1"):
        with pytest.raises(RevisionNotFoundError):
            hf_hub_download(TOY, "config.json", revision=revision)
    assert hf_hub.fetched() == []


def test_range_requests_resume_a_download(hf_hub, tmp_path):
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get

    data = bytes(range(256)) * 40
    _toy(hf_hub, "acme/range", {"config.json": data})
    with open(tmp_path / "part", "wb") as handle:
        handle.write(data[:1000])
        http_get(hf_hub_url("acme/range", "config.json"), handle, resume_size=1000, expected_size=len(data))
    assert (tmp_path / "part").read_bytes() == data
    last = hf_hub.requests[-1]
    assert (last.status, last.body_bytes) == (206, len(data) - 1000)


def test_env_vars_point_a_child_process_at_the_hub_and_offline_needs_no_server(hf_hub):
    _toy(hf_hub, "acme/child")
    script = textwrap.dedent("""
        import json, sys
        from huggingface_hub import snapshot_download
        folder = snapshot_download("acme/child")
        print(json.dumps({"folder": folder, "files": sorted(p for p in __import__("os").listdir(folder))}))
    """)
    run = subprocess.run([sys.executable, "-c", script], env=hf_hub.env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    online = json.loads(run.stdout.splitlines()[-1])
    assert online["folder"].startswith(str(hf_hub.cache_dir)) and online["files"] == ["config.json", "weights"]
    assert hf_hub.fetched("acme/child") == ["config.json", "weights/model.safetensors"]

    hf_hub.clear_log()
    offline = subprocess.run([sys.executable, "-c", script], env={**hf_hub.env, "HF_HUB_OFFLINE": "1"},
                             capture_output=True, text=True, timeout=120)
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout.splitlines()[-1]) == online
    assert hf_hub.requests == []  # served from the cache alone


# ----- diffusers: stabilityai/sdxl-turbo -----

def test_snapshot_download_fetches_only_the_allowed_files(hf_hub):
    from huggingface_hub import snapshot_download

    served = hf_hub.add(SDXL_TURBO)
    wanted = ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
              "unet/diffusion_pytorch_model.fp16.safetensors"]
    folder = Path(snapshot_download(SDXL_TURBO, allow_patterns=["model_index.json", "scheduler/*", "unet/config.json",
                                                                "unet/*.fp16.safetensors"]))
    assert hf_hub.fetched(SDXL_TURBO) == wanted
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == wanted
    assert all((folder / f).read_bytes() == (served / f).read_bytes() for f in wanted)
    assert all((served / f).stat().st_size > 4_000_000 for f in SDXL_SINGLE_FILES)  # big enough to notice


def test_diffusers_loads_the_fp16_variant_and_renders(hf_hub):
    from diffusers import DiffusionPipeline, EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline
    from safetensors.torch import load_file

    served = hf_hub.add(SDXL_TURBO)
    pipe = DiffusionPipeline.from_pretrained(SDXL_TURBO, variant="fp16", torch_dtype=torch.float16)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert isinstance(pipe.scheduler, EulerAncestralDiscreteScheduler)
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    assert pipe.unet.dtype == torch.float16 and pipe.unet.config.addition_embed_type == "text_time"
    fetched = hf_hub.fetched(SDXL_TURBO)
    weights = [f for f in fetched if f.endswith(".safetensors")]
    assert weights == ["text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
                       "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"]
    assert not set(fetched) & set(SDXL_SINGLE_FILES) and not any(f.endswith(".onnx") for f in hf_hub.asked())
    expected = load_file(str(served / "unet/diffusion_pytorch_model.fp16.safetensors"))
    state = pipe.unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())

    image = pipe.to(torch.float32)("a red square", num_inference_steps=1, guidance_scale=0.0,
                                   generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


# ----- open_clip: ViT-B-32 / openai -----

@pytest.mark.slow
def test_open_clip_openai_tag_loads_the_served_quickgelu_weights(hf_hub):
    import open_clip
    from safetensors.torch import load_file

    served = hf_hub.add(OPENAI_VIT_B_32)
    model = open_clip.create_model("ViT-B-32", pretrained="openai", force_quick_gelu=True).eval()
    assert hf_hub.fetched() == ["open_clip_model.safetensors"]
    assert [r.repo_id for r in hf_hub.requests if r.body_bytes] == [OPENAI_VIT_B_32]
    weights = load_file(str(served / "open_clip_model.safetensors"))
    state = model.state_dict()
    assert weights.keys() == state.keys() and all(torch.equal(state[k], v.float()) for k, v in weights.items())

    image = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference_openai_clip(served).encode_image(image)
        torch.testing.assert_close(model.encode_image(image), expected)
        # the tag's weights are QuickGELU: the plain architecture (GELU) loads them but embeds differently
        with pytest.warns(UserWarning, match="QuickGELU mismatch"):
            gelu = open_clip.create_model("ViT-B-32", pretrained="openai").eval()
        assert not torch.allclose(gelu.encode_image(image), expected, atol=1e-3)


# ----- timm: resnet18.a1_in1k -----

def test_timm_loads_the_served_weights(hf_hub):
    import timm
    from safetensors.torch import load_file

    served = hf_hub.add(TIMM_RESNET18)
    model = timm.create_model("resnet18.a1_in1k", pretrained=True)
    assert hf_hub.fetched() == ["model.safetensors"]  # not pytorch_model.bin, which the repo also holds
    weights = load_file(str(served / "model.safetensors"))
    state = model.state_dict()
    assert weights.keys() == state.keys() and all(torch.equal(state[k], v) for k, v in weights.items())
