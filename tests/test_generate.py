import json
import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from pas.core.config import DataError, MixConfig
from pas.core.shards import decode_image, read_shard
from pas.models.presets import PRESETS, recommended
from pas.models.registry import read_entry
from pas.sources.generate import GenerateConfig, effective_sampling, generate, job_digest, merge_manifest, plan_jobs
from pas.sources.plan import candidate_counts, per_concept_quota

CONCEPTS = [{"name": n, "prompts": [f"a {n}", f"a photo of a {n}"], "negative_prompt": "blurry"} for n in ("cat", "dog", "cow")]
FAST = GenerateConfig(steps=1, batch_size=4, shard_size=4)


def shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def keys(folder):
    return [k for shard in sorted(folder.glob("*.tar")) for k, _, _ in read_shard(shard)]


def test_plan_is_prefix_stable_and_balanced():
    small, big = plan_jobs(CONCEPTS, 7, seed=0), plan_jobs(CONCEPTS, 14, seed=0)
    assert big[:7] == small
    assert [j["concept"] for j in big].count("cat") == per_concept_quota(14, 3)[0] == 5
    assert len({j["seed"] for j in big}) == 14
    assert plan_jobs(CONCEPTS, 7, seed=1)[0]["seed"] != small[0]["seed"]


def test_candidate_counts_follow_size_oversample_and_mix():
    assert candidate_counts(100, 2.0, MixConfig(1, 1)) == {"generated": 100, "retrieved": 100}
    assert candidate_counts(100, 1.5, MixConfig(3, 1)) == {"generated": 112, "retrieved": 38}


def test_presets_give_recommended_settings_that_params_override():
    assert set(PRESETS) >= {"sd-turbo", "sdxl-turbo", "sd-1.5", "sd-2.1", "sd-3.5-medium", "flux-schnell"}
    assert recommended("sdxl-turbo") == {"steps": 1, "guidance": 0.0, "resolution": 512}
    sampling = effective_sampling(GenerateConfig(steps=4), recommended("sdxl-turbo"))
    assert (sampling.steps, sampling.guidance, sampling.resolution) == (4, 0.0, 512)
    assert recommended("my-org/my-model")["steps"] == 25


def test_a_model_counts_by_its_content_not_by_the_name_params_gave_it():
    job = plan_jobs([{"name": "dog", "prompts": ["a dog"]}], 1, seed=0)[0]
    sampling = effective_sampling(GenerateConfig(), recommended("sdxl-turbo"))
    by_preset = {"name": "sdxl-turbo", "sha256": "ab" * 32}
    by_hub_id = {"name": "stabilityai/sdxl-turbo", "sha256": "ab" * 32}
    assert job_digest(job, sampling, by_preset) == job_digest(job, sampling, by_hub_id)   # renaming renders nothing
    assert job_digest(job, sampling, by_preset) != job_digest(job, sampling, {**by_preset, "sha256": "cd" * 32})


def test_generate_writes_shards_manifest_provenance_and_keeps_complete_shards(tiny_models, tmp_path):
    model = read_entry(tiny_models["generator"])
    jobs = plan_jobs(CONCEPTS, 6, seed=0)
    out = tmp_path / "gen"
    first = generate(tiny_models["generator"], model, jobs, FAST, out)
    assert (first["images"], first["shards"], first["shards_rendered"], first["images_rendered"]) == (6, 2, 2, 6)
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [r["key"] for r in manifest] == [j["key"] for j in jobs]
    assert {"prompt", "negative_prompt", "seed", "model", "revision", "steps", "guidance", "resolution", "shard",
            "fingerprint"} <= set(manifest[0]) and "seconds" not in manifest[0]
    assert keys(out) == [j["key"] for j in jobs]
    before = shard_bytes(out)
    again = generate(tiny_models["generator"], model, jobs, FAST, out)
    assert again["shards_kept"] == 2 and again["images_rendered"] == 0 and shard_bytes(out) == before
    changed = generate(tiny_models["generator"], model, jobs, GenerateConfig(steps=2, batch_size=4, shard_size=4), out)
    assert changed["images_rendered"] == 6 and shard_bytes(out) != before


def test_same_params_same_bytes_and_batching_only_changes_rounding(tiny_models, tmp_path):
    model = read_entry(tiny_models["generator"])
    jobs = plan_jobs(CONCEPTS, 2, seed=3)
    for name, batch in (("a", 2), ("b", 2), ("c", 1)):
        generate(tiny_models["generator"], model, jobs, GenerateConfig(steps=1, batch_size=batch), tmp_path / name)
    shards = {n: [j for _, j, _ in read_shard(tmp_path / n / "generated-000000.tar")] for n in "abc"}
    assert shards["a"] == shards["b"]
    for a, c in zip(shards["a"], shards["c"]):
        diff = np.abs(np.asarray(decode_image(a), float) - np.asarray(decode_image(c), float))
        assert diff.mean() < 2.0


def test_growing_size_keeps_old_shards_and_renders_only_new_images(tiny_models, tmp_path):
    model = read_entry(tiny_models["generator"])
    out = tmp_path / "gen"
    generate(tiny_models["generator"], model, plan_jobs(CONCEPTS, 8, 0), FAST, out)
    before = shard_bytes(out)
    grown = generate(tiny_models["generator"], model, plan_jobs(CONCEPTS, 16, 0), FAST, out)
    assert grown["images_rendered"] == 8 and grown["shards_kept"] == 2
    after = shard_bytes(out)
    assert all(after[name] == data for name, data in before.items())
    assert keys(out) == [f"gen{i:08d}" for i in range(16)]
    shrunk = generate(tiny_models["generator"], model, plan_jobs(CONCEPTS, 6, 0), FAST, out)
    assert shrunk["images_rendered"] == 0 and keys(out) == [f"gen{i:08d}" for i in range(6)]
    assert shard_bytes(out)["generated-000000.tar"] == before["generated-000000.tar"]


def test_merge_refuses_when_a_shard_is_missing(tiny_models, tmp_path):
    model = read_entry(tiny_models["generator"])
    generate(tiny_models["generator"], model, plan_jobs(CONCEPTS, 8, 0), FAST, tmp_path)
    (tmp_path / "generated-000001.parquet").unlink()
    with pytest.raises(DataError, match=r"shards \[1\] are not generated; run the generate stage again"):
        merge_manifest(tmp_path, 2)


KILLABLE = """
import json, sys, time
from pathlib import Path
import pas.sources.generate as g
from pas.models.registry import read_entry
model_dir, out = sys.argv[1], Path(sys.argv[2])
concepts = json.loads(sys.argv[3])
render, calls = g.render, []

def render_then_report(pipe, jobs, sampling):
    images = render(pipe, jobs, sampling)
    calls.append(1)
    if len(calls) == 5:               # batch 2, shard 4: the first render of shard 2, after shards 0 and 1 are written
        print("mid-shard", flush=True)
        time.sleep(120)               # the parent kills the process here
    return images

g.render = render_then_report
g.generate(model_dir, read_entry(model_dir), g.plan_jobs(concepts, 24, 0),
           g.GenerateConfig(steps=1, batch_size=2, shard_size=4), out)
"""


def test_sigkill_mid_run_then_rerun_gives_exact_keys_and_untouched_complete_shards(tiny_models, tmp_path):
    out = tmp_path / "gen"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(tiny_models["generator"]), str(out),
                             json.dumps(CONCEPTS)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "mid-shard"          # the event: shard 2 is being rendered
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete = shard_bytes(out)
    assert sorted(complete) == ["generated-000000.tar", "generated-000001.tar"]
    model = read_entry(tiny_models["generator"])
    result = generate(tiny_models["generator"], model, plan_jobs(CONCEPTS, 24, 0),
                      GenerateConfig(steps=1, batch_size=2, shard_size=4), out)
    assert result["shards_kept"] == 2 and result["shards_rendered"] == 4 and result["images_rendered"] == 16
    assert keys(out) == [f"gen{i:08d}" for i in range(24)]
    after = shard_bytes(out)
    assert all(after[name] == data for name, data in complete.items())          # finished shards untouched
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]        # no temp files left


def test_a_prompt_over_the_encoders_tokens_is_one_warning_not_a_notice_per_batch(tiny_models, tmp_path, caplog,
                                                                                 capfd):
    """The food bank's longest prompts exceed CLIP's 77 tokens: generate says so once, diffusers' and transformers'
    truncation notices (a 1,000-character line per batch) are not printed, and the images are those of the prompt."""
    long = "a photo of " + ", ".join(f"grilled salmon teriyaki number {i}" for i in range(30))
    concepts = [{"name": "salmon", "prompts": [long, "a salmon"], "negative_prompt": ""}]
    jobs = plan_jobs(concepts, 4, seed=0)
    model = read_entry(tiny_models["generator"])
    with caplog.at_level("WARNING"):
        generate(tiny_models["generator"], model, jobs, FAST, tmp_path / "gen")
    warnings = [r.getMessage() for r in caplog.records if "longer than the text encoder" in r.getMessage()]
    assert warnings == [f"1 of 2 distinct prompts are longer than the text encoder's 77 tokens: it reads only their "
                        f"start (e.g. {long[:120]!r})"]
    printed = capfd.readouterr()
    assert "truncated because CLIP" not in printed.err + caplog.text
    assert "Token indices sequence length" not in printed.err + caplog.text
    import logging

    from pas.sources.generate import WithoutTruncationNotices
    loggers = [logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)]
    assert any(logger.name.startswith("diffusers.pipelines.") for logger in loggers)
    assert not [logger.name for logger in loggers                              # the filter is removed afterwards
                if any(isinstance(f, WithoutTruncationNotices) for f in logger.filters)]
