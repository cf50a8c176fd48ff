"""Where a result came from: the pinned models (models/lock.json), a params digest, the git commit, the date.

One function gathers it (`collect_provenance`); the dataset report, eval.md and the export cards render it:

    prov = collect_provenance(".", params)           # params: the params the output depended on
    provenance_markdown(prov)  /  provenance_html(prov)
"""
from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

TINY_WARNING = ("images come from random-weight tiny models ({names}): this dataset demonstrates the pipeline, "
                "it is not a real dataset")
# params sections that shape the curated dataset: the params the dataset report and the export cards digest
DATASET_PARAMS = ("size", "seed", "domain", "oversample", "mix", "models", "sample_data", "concepts", "generate",
                  "pool_index", "retrieve", "filter", "dedup")
PIPELINE_WRITTEN = ("dvc.lock", "metrics", "plots")  # git-tracked files the pipeline itself rewrites: not "dirty"


def params_digest(params: dict[str, Any] | None) -> str | None:
    """First 12 hex digits of the sha256 of the params as canonical JSON (sorted keys); None without params."""
    if params is None:
        return None
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def read_lock(path: str | Path) -> list[dict[str, Any]]:
    """One entry per pinned model of models/lock.json (role, name, revision, sha256, source); [] when missing."""
    path = Path(path)
    if not path.is_file():
        return []
    lock = json.loads(path.read_text())
    return [{"role": role, "name": entry.get("name", ""), "revision": entry.get("revision", ""),
             "sha256": entry.get("sha256", ""), "source": entry.get("source", "")}
            for role, entry in sorted(lock.items()) if isinstance(entry, dict)]


def is_tiny(model: dict[str, Any]) -> bool:
    """A random-weight model built from a config (tiny://...)."""
    return str(model.get("name", "")).startswith("tiny://") or model.get("source") == "tiny"


def git_state(repo_root: str | Path) -> dict[str, Any]:
    """{"commit": HEAD or None outside a git repository, "dirty": bool, "changed": up to 10 changed paths,
    "n_changed": how many}.

    Files the pipeline itself rewrites (dvc.lock, metrics/, plots/) do not count as changes; params.yaml does.
    """
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], check=False, cwd=repo_root, capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": False, "changed": [], "n_changed": 0}
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                 *(f":(exclude){p}" for p in PIPELINE_WRITTEN)) or ""
    changed = sorted(line[3:] for line in status.splitlines() if line.strip())
    return {"commit": commit.strip(), "dirty": bool(changed), "changed": changed[:10], "n_changed": len(changed)}


def now_utc() -> str:
    """ISO 8601 UTC time to the second; SOURCE_DATE_EPOCH (reproducible builds) pins it."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch and epoch.isdigit()
            else dt.datetime.now(dt.timezone.utc))
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def collect_provenance(repo_root: str | Path, params: dict[str, Any] | None, lock: str | Path | None = None,
                       run_facts: bool = True) -> dict[str, Any]:
    """Models (lock, default <repo_root>/models/lock.json), params + digest (None: not recorded), git commit/dirty,
    date and whether a random-weight tiny model was used; plain JSON types throughout.

    `run_facts=False` leaves out the git commit and the date: a DVC stage's output must be the same bytes whenever
    its deps and params are (a fresh clone reproduces the committed dvc.lock), and the commit that holds a result is
    never the one that made it. The stage's MLflow run carries both (`mlflow.source.git.commit`, its start time).
    """
    repo_root = Path(repo_root)
    models = read_lock(lock if lock is not None else repo_root / "models" / "lock.json")
    facts = {"git": git_state(repo_root), "date": now_utc()} if run_facts else {}
    return {"models": models, "params": params, "params_digest": params_digest(params), **facts,
            "tiny_models": any(is_tiny(m) for m in models)}


def tiny_warning(prov: dict[str, Any]) -> str | None:
    """The warning to show when random-weight tiny models made the result; None when none did."""
    names = [m["name"] for m in prov["models"] if is_tiny(m)]
    return TINY_WARNING.format(names=", ".join(names)) if names else None


def _model_line(model: dict[str, Any]) -> str:
    pin = model["revision"] or "-"
    if model["sha256"]:
        pin += f", sha256 {model['sha256'][:12]}"
    return f"{model['role']}: {model['name']} ({pin})"


def _commit_line(prov: dict[str, Any]) -> str:
    state = prov["git"]
    if state["commit"] is None:
        return "not a git repository"
    if not state["dirty"]:
        return state["commit"]
    more = state["n_changed"] - len(state["changed"])
    listed = ", ".join(state["changed"]) + (f" and {more} more" if more > 0 else "")
    return f"{state['commit']} + uncommitted changes ({listed})"


def provenance_lines(prov: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows shared by every rendering."""
    models = "; ".join(_model_line(m) for m in prov["models"]) or "not recorded (no models/lock.json)"
    rows = [("models", models), ("params digest", prov["params_digest"] or "not recorded (no params)")]
    if "git" not in prov:   # a DVC stage's output: what made it is dvc.lock's deps and params, not a commit or a date
        return [*rows, ("git commit, date", "in the stage's MLflow run (this file reproduces byte for byte)")]
    return [*rows, ("git commit", _commit_line(prov)), ("date", prov["date"])]


def params_yaml(prov: dict[str, Any]) -> str:
    """The params as YAML (sorted keys), as the digest saw them."""
    return yaml.safe_dump(json.loads(json.dumps(prov["params"], default=str)), sort_keys=True)


def provenance_markdown(prov: dict[str, Any], heading: str = "## Provenance", with_params: bool = False,
                        warn: bool = True) -> str:
    """A Markdown block: the tiny-model warning (when it applies and `warn`), one bullet per provenance row, then
    (with_params) the params in a YAML code block."""
    out = [heading, ""]
    if warn and (warning := tiny_warning(prov)) is not None:
        out += [f"> **Warning:** {warning}.", ""]
    out += [f"- **{label}**: {text}" for label, text in provenance_lines(prov)]
    if with_params and prov["params"] is not None:
        out += ["", f"Params (digest {prov['params_digest']}):", "", "```yaml", params_yaml(prov).rstrip(), "```"]
    return "\n".join(out) + "\n"


def provenance_html(prov: dict[str, Any]) -> str:
    """An HTML block: the tiny-model warning (a visible red box) and a provenance table."""
    warning = tiny_warning(prov)
    warning = ("" if warning is None else "<p class='warning' style='border:2px solid #c00;background:#fee;"
               f"padding:.5em;font-weight:bold'>Warning: {html.escape(warning)}.</p>")
    rows = "".join(f"<tr><th>{html.escape(label)}</th><td>{html.escape(text)}</td></tr>"
                   for label, text in provenance_lines(prov))
    params = ("" if prov["params"] is None else
              f"<details><summary>params</summary><pre>{html.escape(params_yaml(prov))}</pre></details>")
    return f"<section id='provenance'><h2>Provenance</h2>{warning}<table>{rows}</table>{params}</section>"
