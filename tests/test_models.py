import json

import pytest

from pas.core.config import ConfigError
from pas.models.clip import ClipEncoder
from pas.models.registry import ModelsConfig, check_names, content_hash, read_entry, resolve, scheme_of


def test_tiny_models_load_through_the_real_local_dir_paths(tiny_models, image_factory):
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(str(tiny_models["generator"]))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    encoder = ClipEncoder(tiny_models["clip"])
    images = encoder.encode_images([image_factory(i) for i in range(3)])
    texts = encoder.encode_texts(["a cat", "a dog"])
    assert images.shape[0] == 3 and texts.shape == (2, images.shape[1])
    assert abs(float((images ** 2).sum(1).mean()) - 1.0) < 1e-4


def test_tiny_clip_keeps_copies_close_and_distinct_images_apart(tiny_models, image_factory):
    encoder = ClipEncoder(tiny_models["clip"])
    base = image_factory(0)
    copy = base.resize((50, 50)).resize((64, 64))
    e = encoder.encode_images([base, copy, image_factory(1), image_factory(2)])
    sims = e @ e.T
    assert sims[0, 1] > 0.97
    assert sims[0, 2] < 0.95 and sims[0, 3] < 0.95


def test_tiny_builds_are_reproducible(tmp_path):
    a = resolve("clip", "tiny://clip", tmp_path / "a")
    b = resolve("clip", "tiny://clip", tmp_path / "b")
    assert a["sha256"] == b["sha256"] and a["source"] == "tiny"


def test_local_directory_is_copied_and_pinned_by_content(tiny_models, tmp_path):
    entry = resolve("clip", str(tiny_models["clip"]), tmp_path / "clip")
    assert entry["source"] == "local" and entry["sha256"] == content_hash(tiny_models["clip"])
    assert read_entry(tmp_path / "clip") == entry
    assert json.loads((tmp_path / "clip" / "open_clip_config.json").read_text())["model_cfg"]


@pytest.mark.parametrize("role, name, match", [
    ("generator", "tiny://nope", "unknown tiny model; use one of tiny://sd"),
    ("clip", "not a model!", "is not tiny://"),
    ("clip", "ViT-Nope-99/openai", "unknown open_clip architecture"),
    ("clip", "ViT-B-32/not_a_tag", "unknown pretrained tag"),
])
def test_wrong_model_names_fail_at_once_naming_the_key(role, name, match, tmp_path):
    with pytest.raises(ConfigError, match=match) as err:
        resolve(role, name, tmp_path / role)
    assert f"models.{role}=" in str(err.value)


def test_local_dir_without_model_files_is_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="lacks model_index.json"):
        resolve("generator", str(tmp_path / "empty"), tmp_path / "out")


def test_scheme_detection_and_check_names():
    assert scheme_of("generator", "stabilityai/sdxl-turbo") == "hub"
    assert scheme_of("generator", "stabilityai/sdxl-turbo@main") == "hub"
    assert scheme_of("clip", "hf-hub:laion/CLIP-ViT-L-14") == "hub"
    assert scheme_of("clip", "ViT-L-14/laion2b_s32b_b82k") == "hub"
    with pytest.raises(ConfigError, match="models.generator"):
        check_names(ModelsConfig(generator="./missing/dir"))
