"""Provenance: pinned models from models/lock.json, a params digest, the git commit (+ dirty), the date, and a
warning when random tiny models made the result; rendered as Markdown and HTML."""
import json
import subprocess

import pytest

from pas.core.provenance import (
    collect_provenance,
    params_digest,
    provenance_html,
    provenance_markdown,
)

TINY_LOCK = {"clip": {"name": "tiny://clip", "path": "models/clip", "revision": "config", "sha256": "ab" * 32,
                      "source": "tiny"},
             "generator": {"name": "tiny://sd", "path": "models/generator", "revision": "config",
                           "sha256": "cd" * 32, "source": "tiny", "recommended": {"steps": 2}}}
REAL_LOCK = {"clip": {"name": "ViT-B-32/openai", "path": "models/clip", "revision": "3f2a1b", "sha256": "ef" * 32,
                      "source": "open_clip"},
             "generator": {"name": "stabilityai/sdxl-turbo", "path": "models/generator", "revision": "71153311",
                           "sha256": "", "source": "hub"}}


def git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git repository with params.yaml, dvc.lock, metrics/ and a tiny models/lock.json, all committed."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "lock.json").write_text(json.dumps(TINY_LOCK))
    (tmp_path / "params.yaml").write_text("size: 300\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "dedup.json").write_text("{}\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "start")
    return tmp_path


def test_params_digest_ignores_key_order_and_follows_values():
    a = params_digest({"size": 300, "mix": {"generated": 0.5, "retrieved": 0.5}})
    assert a == params_digest({"mix": {"retrieved": 0.5, "generated": 0.5}, "size": 300})
    assert a != params_digest({"size": 301, "mix": {"generated": 0.5, "retrieved": 0.5}})
    assert len(a) == 12 and params_digest(None) is None


def test_a_clean_checkout_gives_its_commit_and_the_pinned_models(repo, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    prov = collect_provenance(repo, {"size": 300})
    assert prov["git"]["commit"] == git(repo, "rev-parse", "HEAD") and not prov["git"]["dirty"]
    assert [(m["role"], m["name"], m["revision"]) for m in prov["models"]] == [
        ("clip", "tiny://clip", "config"), ("generator", "tiny://sd", "config")]
    assert prov["date"] == "2023-11-14T22:13:20Z" and prov["tiny_models"]
    assert prov["params_digest"] == params_digest({"size": 300})
    json.dumps(prov)  # plain JSON: an MLflow tag, a card or metrics can carry it as is


def test_dirty_means_sources_or_params_changed_not_what_the_pipeline_rewrites(repo):
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (repo / "metrics" / "dedup.json").write_text('{"curated": 1}\n')
    assert not collect_provenance(repo, {})["git"]["dirty"]
    (repo / "params.yaml").write_text("size: 500\n")
    state = collect_provenance(repo, {})["git"]
    assert state["dirty"] and state["changed"] == ["params.yaml"]
    assert "+ uncommitted changes (params.yaml)" in provenance_markdown(collect_provenance(repo, {}))


def test_outside_git_and_without_a_lock_it_says_so(tmp_path):
    prov = collect_provenance(tmp_path, None)
    assert prov["git"]["commit"] is None and prov["models"] == [] and not prov["tiny_models"]
    text = provenance_markdown(prov)
    assert "not a git repository" in text and "not recorded (no models/lock.json)" in text
    assert "not recorded (no params)" in text and "Warning" not in text


def test_tiny_models_are_warned_about_in_markdown_and_html(repo):
    prov = collect_provenance(repo, {"size": 300, "models": {"clip": "tiny://clip"}})
    text = provenance_markdown(prov, with_params=True)
    assert "> **Warning:** images come from random-weight tiny models (tiny://clip, tiny://sd)" in text
    assert "not a real dataset" in text and "```yaml\nmodels:\n  clip: tiny://clip\nsize: 300\n```" in text
    assert "clip: tiny://clip (config, sha256 abababababab)" in text
    page = provenance_html(prov)
    assert "class='warning'" in page and "random-weight tiny models" in page
    assert f"<td>{prov['params_digest']}</td>" in page and f"<td>{prov['git']['commit']}</td>" in page
    assert "Warning" not in provenance_markdown(prov, warn=False)


def test_real_models_carry_no_warning_and_html_is_escaped(tmp_path):
    lock = tmp_path / "lock.json"
    lock.write_text(json.dumps({**REAL_LOCK, "clip": {**REAL_LOCK["clip"], "name": "<b>clip</b>"}}))
    prov = collect_provenance(tmp_path, {"size": 300}, lock)
    assert not prov["tiny_models"]
    assert "Warning" not in provenance_markdown(prov) and "class='warning'" not in provenance_html(prov)
    assert "generator: stabilityai/sdxl-turbo (71153311)" in provenance_markdown(prov)
    assert "&lt;b&gt;clip&lt;/b&gt;" in provenance_html(prov) and "<b>clip</b>" not in provenance_html(prov)


def test_a_stage_output_leaves_the_commit_and_date_to_mlflow_so_it_reproduces(repo, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    prov = collect_provenance(repo, {"size": 300}, run_facts=False)
    assert "git" not in prov and "date" not in prov
    text = provenance_markdown(prov)
    assert git(repo, "rev-parse", "HEAD") not in text and "in the stage's MLflow run" in text
    (repo / "params.yaml").write_text("size: 301\n")                     # another commit state, another day
    git(repo, "commit", "-qam", "later")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1900000000")
    assert provenance_markdown(collect_provenance(repo, {"size": 300}, run_facts=False)) == text
    assert provenance_html(collect_provenance(repo, {"size": 300}, run_facts=False)) == provenance_html(prov)
