"""The real model path (issue 24) through the libraries' own code: presets by hub id, QuickGELU tags, a pipeline's
fp16 files only, stable content hashes, timm baselines pinned by the models stage and loaded offline with their
pretrained cfg, native bf16 only. Hub repos come from a pre-filled Hugging Face cache with HF_HUB_OFFLINE on."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_hub.fixtures import hf_hub, hf_hub_server  # noqa: F401 (pytest fixtures)

from pas.core.config import ConfigError
from pas.models.presets import PRESETS, recommended
from pas.models.registry import content_hash, resolve

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline: the clients read these constants per call (the env only at import)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_repo(cache: Path, repo_id: str, files: Path) -> Path:
    """Put folder `files` into the cache as repo_id's snapshot SHA (refs/main -> SHA), as `hf download` leaves it."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / SHA
    shutil.copytree(files, snapshot)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(SHA)
    return snapshot


# 1. presets by hub id ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["stabilityai/sdxl-turbo", "StabilityAI/SDXL-Turbo", "stabilityai/sdxl-turbo@main"])
def test_a_generator_named_by_its_hub_id_gets_its_preset(name):
    assert recommended(name) == recommended("sdxl-turbo") == {"steps": 1, "guidance": 0.0, "resolution": 512}


def test_every_preset_hub_id_gets_the_preset_settings():
    for short, preset in PRESETS.items():
        assert recommended(preset.hub_id) == recommended(short), short
    assert recommended("black-forest-labs/FLUX.1-schnell")["steps"] == 4


def test_the_preset_steps_and_guidance_reach_the_pipeline_call():
    from pas.sources.generate import GenerateConfig, effective_sampling, render

    calls = []

    class Pipe:
        def __call__(self, **kwargs):
            calls.append(kwargs)
            return type("Out", (), {"images": ["image"] * len(kwargs["prompt"])})()

    sampling = effective_sampling(GenerateConfig(), recommended("stabilityai/sdxl-turbo"))
    render(Pipe(), [{"prompt": "a cat", "negative_prompt": "", "seed": 1}], sampling)
    assert calls[0]["num_inference_steps"] == 1 and calls[0]["guidance_scale"] == 0.0
    assert calls[0]["height"] == 512


# 2. QuickGELU ---------------------------------------------------------------------------------------------------

TINY_ARCH = "Tiny-QG-Test"


@pytest.fixture
def quick_gelu_tag(tmp_path, monkeypatch):
    """A small open_clip architecture whose `openai` tag says quick_gelu (as ViT-B-32/openai does), its weights a
    QuickGELU model's, served by open_clip's own hub download from a filled cache."""
    import open_clip
    from open_clip import factory, pretrained
    from safetensors.torch import save_file

    from pas.models.tiny import TINY_CLIP_CONFIG

    cfg = json.loads(json.dumps(TINY_CLIP_CONFIG["model_cfg"]))
    cfg["vision_cfg"].update(patch_size=16, layers=2)  # several patches and layers: the activation shows
    monkeypatch.setitem(factory._MODEL_CONFIGS, TINY_ARCH, cfg)
    monkeypatch.setitem(pretrained._PRETRAINED, TINY_ARCH, {"openai": pretrained._pcfg(
        hf_hub="test-org/tiny-qg-clip/", quick_gelu=True)})
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH, force_quick_gelu=True)
    files = tmp_path / "repo"
    files.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(files / "open_clip_model.safetensors"))
    return files


def _image_embeddings(model, pixels):
    with torch.inference_mode():
        return model.encode_image(pixels).numpy()


def test_a_quick_gelu_tag_is_built_and_reloaded_with_quick_gelu(quick_gelu_tag, hf_cache, tmp_path):
    import open_clip

    from pas.models.fetch import fetch_hub

    snapshot = cache_repo(hf_cache, "test-org/tiny-qg-clip", quick_gelu_tag)
    entry = resolve("clip", f"{TINY_ARCH}/openai", tmp_path / "clip", fetch_hub)
    saved = json.loads((tmp_path / "clip" / "open_clip_config.json").read_text())
    assert saved["model_cfg"]["quick_gelu"] is True and entry["quick_gelu"] is True
    assert entry["hub_id"] == "test-org/tiny-qg-clip" and entry["revision"] == SHA

    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    reloaded = open_clip.create_model(f"local-dir:{tmp_path / 'clip'}").eval()
    weights = str(snapshot / "open_clip_model.safetensors")
    quick = open_clip.create_model(TINY_ARCH, pretrained=weights, force_quick_gelu=True).eval()
    gelu = open_clip.create_model(TINY_ARCH, pretrained=weights).eval()
    np.testing.assert_allclose(_image_embeddings(reloaded, pixels), _image_embeddings(quick, pixels), atol=1e-6)
    assert np.abs(_image_embeddings(reloaded, pixels) - _image_embeddings(gelu, pixels)).max() > 1e-3


# 3 + 4. a pipeline's files only, stable hashes, offline ---------------------------------------------------------

@pytest.fixture
def sdxl_like_repo(tiny_models, tmp_path) -> Path:
    """The tiny pipeline laid out as stabilityai/sdxl-turbo is: full and fp16 weights per component, root-level
    single-file checkpoints, README, and a tool's hidden metadata."""
    from diffusers import AutoPipelineForText2Image

    repo = tmp_path / "sdxl-like"
    shutil.copytree(tiny_models["generator"], repo, ignore=shutil.ignore_patterns("pas-model.json"))
    AutoPipelineForText2Image.from_pretrained(str(repo)).save_pretrained(str(repo), variant="fp16")
    for name in ("sd_xl_turbo_1.0.safetensors", "sd_xl_turbo_1.0_fp16.safetensors"):
        (repo / name).write_bytes(b"single-file checkpoint")
    (repo / "README.md").write_text("card")
    return repo


def test_a_hub_generator_copies_only_the_fp16_files_it_loads_and_hashes_stably(sdxl_like_repo, hf_cache, tmp_path):
    from pas.models.fetch import fetch_hub
    from pas.sources.generate import load_pipeline

    snapshot = cache_repo(hf_cache, "stabilityai/sdxl-turbo", sdxl_like_repo)
    first = resolve("generator", "stabilityai/sdxl-turbo", tmp_path / "a", fetch_hub)
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file())
    weights = [f for f in files if f.endswith(".safetensors")]
    assert weights and all(".fp16." in f and "/" in f for f in weights), weights  # no full weights, no root files
    assert "README.md" not in files and first["variant"] == "fp16" and first["revision"] == SHA
    assert first["recommended"]["steps"] == 1
    assert not any(p.is_symlink() for p in (tmp_path / "a").rglob("*"))  # plain files, not links into the cache

    (snapshot / ".cache" / "huggingface").mkdir(parents=True)  # a tool's metadata, with a timestamp
    (snapshot / ".cache" / "huggingface" / "x.metadata").write_text("1700000000.0")
    second = resolve("generator", "sdxl-turbo", tmp_path / "b", fetch_hub)
    assert second["sha256"] == first["sha256"] == content_hash(tmp_path / "b")
    assert type(load_pipeline(tmp_path / "a", "cpu", variant=first["variant"])).__name__ == "StableDiffusionPipeline"


def test_content_hash_ignores_hidden_paths(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(b"w")
    before = content_hash(tmp_path / "m")
    (tmp_path / "m" / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (tmp_path / "m" / ".cache" / "huggingface" / "download" / "weights.bin.metadata").write_text("sha\n1712345678.9")
    assert content_hash(tmp_path / "m") == before


def test_a_model_missing_offline_says_how_to_fill_the_cache(hf_cache, tmp_path):
    from pas.models.fetch import fetch_hub

    with pytest.raises(ConfigError) as err:
        resolve("generator", "stabilityai/sdxl-turbo", tmp_path / "g", fetch_hub)
    message = str(err.value)
    assert "\n" not in message and "models.generator='stabilityai/sdxl-turbo'" in message
    assert "HF_HUB_OFFLINE=1" in message and "hf download stabilityai/sdxl-turbo" in message and "HF_ENDPOINT" in message


def test_hub_names_need_the_models_stage(tmp_path):
    with pytest.raises(ConfigError, match="the models stage fetches it"):
        resolve("generator", "stabilityai/sdxl-turbo", tmp_path / "g")


# 5. timm baselines ----------------------------------------------------------------------------------------------

BASELINE = "test_resnet.r160_in1k"  # a tiny timm model with hub weights: 160 px, bilinear, crop_pct 0.95


@pytest.fixture
def timm_repo(tmp_path) -> Path:
    """timm/test_resnet.r160_in1k as the hub holds it (config.json + model.safetensors), random weights."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(3)
    model = timm.create_model(BASELINE, pretrained=False)
    model.pretrained_cfg = {**model.pretrained_cfg, "hf_hub_id": f"timm/{BASELINE}"}
    save_for_hf(model, str(tmp_path / "timm-repo"), safe_serialization=True)
    return tmp_path / "timm-repo"


def test_the_models_stage_pins_timm_baselines_and_finetune_loads_them_offline(timm_repo, hf_cache, tmp_path):
    from safetensors.torch import load_file

    from pas.models.baselines import timm_baselines
    from pas.models.fetch import resolve_baseline
    from pas.transfer.config import InitSpec
    from pas.transfer.inits import build_init

    snapshot = cache_repo(hf_cache, f"timm/{BASELINE}", timm_repo)
    finetune = {"inits": [{"name": "pas", "arch": "pretrain", "weights": "pretrain"},
                          {"name": "imagenet", "arch": BASELINE, "weights": "timm"}]}
    assert timm_baselines(finetune) == {"imagenet": BASELINE}
    entry = resolve_baseline("imagenet", BASELINE, tmp_path / "baselines" / "imagenet")
    assert entry["hub_id"] == f"timm/{BASELINE}" and entry["revision"] == SHA and len(entry["sha256"]) == 64

    model, info = build_init(InitSpec("imagenet", BASELINE, "timm"), "resnet18", None, 0, tmp_path / "baselines")
    hub_weights = load_file(snapshot / "model.safetensors")
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, hub_weights[key])
    assert info.source["revision"] == SHA and info.source["sha256"] == entry["sha256"]
    assert info.data_config["input_size"] == [3, 160, 160] and info.data_config["interpolation"] == "bilinear"
    assert info.data_config["crop_pct"] == 0.95 and info.mean == (0.5, 0.5, 0.5)


def test_a_timm_init_is_evaluated_with_its_pretrained_cfg_transform(image_factory):
    from timm.data import create_transform

    from pas.transfer.features import eval_transform, preprocess

    cfg = {"input_size": [3, 160, 160], "interpolation": "bilinear", "crop_pct": 0.95, "crop_mode": "center",
           "mean": [0.5] * 3, "std": [0.5] * 3}
    image = image_factory(0).resize((200, 120))
    pixels = eval_transform(cfg)(image)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 160, 160)
    reference = create_transform(**cfg, is_training=False)(image)  # timm's own, normalised: undo it
    np.testing.assert_allclose(pixels / 255.0, reference.numpy() * 0.5 + 0.5, atol=1e-5)
    assert preprocess(image, 64).shape == (3, 64, 64)  # the default decode is unchanged


def test_timm_baselines_need_a_tagged_arch():
    from pas.models.baselines import timm_baselines

    with pytest.raises(ConfigError, match="weights: timm needs a name and a timm arch"):
        timm_baselines({"inits": [{"name": "x", "arch": "pretrain", "weights": "timm"}]})


# 7. native bf16 only ------------------------------------------------------------------------------------------

def _emulated_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)


def test_precision_auto_does_not_count_emulated_bf16(monkeypatch):
    from pas.ssl.pretrain import trainer_precision

    _emulated_bf16(monkeypatch)
    assert trainer_precision("auto", "cuda") == "16-mixed"


def test_generation_dtype_and_variant_on_a_gpu_without_native_bf16(monkeypatch, tmp_path):
    from diffusers import AutoPipelineForText2Image

    from pas.sources.generate import load_pipeline

    _emulated_bf16(monkeypatch)
    seen = {}

    class Pipe:
        unet = None

        def set_progress_bar_config(self, **kwargs):
            pass

        def to(self, device):
            return self

    def from_pretrained(path, **kwargs):
        seen.update(kwargs)
        return Pipe()

    monkeypatch.setattr(AutoPipelineForText2Image, "from_pretrained", from_pretrained)
    load_pipeline(tmp_path, "cuda", variant="fp16")
    assert seen == {"dtype": torch.float16, "variant": "fp16"}


def test_finetune_feeds_a_timm_baseline_its_own_transform_and_the_others_the_shared_decode(timm_repo, hf_cache,
                                                                                           tmp_path, monkeypatch):
    from test_finetune import write_split

    import pas.transfer.finetune as finetune
    from pas.models.fetch import resolve_baseline
    from pas.transfer.config import ElfisConfig, FinetuneConfig, InitSpec
    from pas.transfer.finetune import run_finetune

    cache_repo(hf_cache, f"timm/{BASELINE}", timm_repo)
    resolve_baseline("imagenet", BASELINE, tmp_path / "baselines" / "imagenet")
    data = tmp_path / "shapes"
    write_split(data / "train.parquet", per_class=2, seed=0)
    write_split(data / "test.parquet", per_class=1, seed=1)
    cfg = FinetuneConfig(image_size=32, protocols=("knn",), elfis=ElfisConfig(protocols=()),
                         inits=(InitSpec("random", BASELINE.split(".")[0], "random"),
                                InitSpec("imagenet", BASELINE, "timm")))
    sides = []
    real = finetune.pixel_features
    monkeypatch.setattr(finetune, "pixel_features", lambda backbone, pixels, *a, **k: (
        sides.append(pixels.shape[-1]), real(backbone, pixels, *a, **k))[1])
    run_finetune({"shapes": data}, "resnet10t", None, cfg, tmp_path / "out", seed=0, baselines=tmp_path / "baselines")
    assert sides == [32, 32, 160, 160]  # random: image_size (train, test); imagenet: its cfg's 160 px
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["inits"]["imagenet"]["data_config"]["input_size"] == [3, 160, 160]
    assert index["inits"]["imagenet"]["source"]["revision"] == SHA and "data_config" not in index["inits"]["random"]


# the real clients against the local hub (tests/hf_hub), as with HF_ENDPOINT set to a mirror --------------------

@pytest.mark.slow  # builds a full-size ViT-B-32 repo: about 100 s on 2 cores
def test_the_models_stage_fetches_only_what_each_library_loads_from_a_mirror(hf_hub, tmp_path):
    from hf_hub.repos import OPENAI_VIT_B_32, SDXL_SINGLE_FILES, SDXL_TURBO, TIMM_RESNET18

    from pas.models.fetch import fetch_hub, resolve_baseline

    for repo in (SDXL_TURBO, OPENAI_VIT_B_32, TIMM_RESNET18):
        hf_hub.add(repo)
    generator = resolve("generator", SDXL_TURBO, tmp_path / "generator", fetch_hub)
    fetched = hf_hub.fetched(SDXL_TURBO)
    assert generator["variant"] == "fp16" and generator["revision"] == hf_hub.repo(SDXL_TURBO).sha
    assert not set(SDXL_SINGLE_FILES) & set(fetched)
    assert all(".fp16." in f for f in fetched if f.endswith(".safetensors")), fetched
    clip = resolve("clip", "ViT-B-32/openai", tmp_path / "clip", fetch_hub)
    assert clip["quick_gelu"] is True and clip["hub_id"] == OPENAI_VIT_B_32
    baseline = resolve_baseline("imagenet", "resnet18.a1_in1k", tmp_path / "imagenet")
    assert baseline["hub_id"] == TIMM_RESNET18 and baseline["revision"] == hf_hub.repo(TIMM_RESNET18).sha

    hf_hub.clear_log()  # re-resolving an unchanged generator: a copy from the cache, the same bytes
    again = resolve("generator", "sdxl-turbo", tmp_path / "generator2", fetch_hub)
    assert hf_hub.fetched() == [] and again["sha256"] == generator["sha256"]


def test_an_open_clip_tag_without_a_hub_id_is_one_clear_error(monkeypatch, tmp_path):
    """Every tag of the pinned open_clip has a hub id; one without could not be pinned by commit: refused, not fetched."""
    import open_clip

    from pas.models.openclip import fetch_tag

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: {"url": "https://example.invalid/w.pt"})
    with pytest.raises(ConfigError, match=r"models.clip='ViT-B-32/old': open_clip gives this tag no Hugging Face hub id"):
        fetch_tag("ViT-B-32", "old", tmp_path / "clip")
    assert not (tmp_path / "clip").exists()
