"""requirements.lock agrees with pyproject.toml: every requirement (dependencies and the test extra) is pinned
once, at a version its specifier allows, as a plain name==version line; pas itself is not in it."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def read_pins(text: str) -> list[Requirement]:
    """The lock's requirement lines (comments and blank lines skipped)."""
    return [Requirement(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def project_requirements(pyproject: dict) -> list[Requirement]:
    """pyproject's dependencies and its test extra."""
    project = pyproject["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def disagreements(required: list[Requirement], pins: list[Requirement], project: str = "pas") -> list[str]:
    """One line per way the pins fail the requirements; empty when they agree."""
    problems = [f"{pin}: not a plain name==version pin" for pin in pins
                if pin.marker or pin.extras or pin.url or len(pin.specifier) != 1
                or next(iter(pin.specifier)).operator != "=="]
    counts = Counter(canonicalize_name(pin.name) for pin in pins)
    problems += [f"{name}: pinned {n} times" for name, n in sorted(counts.items()) if n > 1]
    if canonicalize_name(project) in counts:
        problems.append(f"{project}: the project itself is pinned")
    versions = {canonicalize_name(pin.name): next(iter(pin.specifier)).version for pin in pins if pin.specifier}
    for req in required:
        version = versions.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req}: not pinned in the lock")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req}: the lock pins {version}")
    return problems


def test_the_lock_pins_every_pyproject_requirement_once_within_its_specifier():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = read_pins((ROOT / "requirements.lock").read_text())
    assert disagreements(project_requirements(pyproject), pins) == []
    assert len(pins) > len(project_requirements(pyproject))      # transitive dependencies are pinned too


@pytest.mark.parametrize(("lock", "problem"), [
    ("torch==2.14.1\nnumpy==2.4.6\n", "pyyaml: not pinned in the lock"),
    ("torch==2.14.1\nnumpy==1.0\nPyYAML==6.0.4\n", "numpy>=2: the lock pins 1.0"),
    ("torch==2.14.1\nnumpy==2.4.6\nPyYAML==6.0.4\npyyaml==6.0.3\n", "pyyaml: pinned 2 times"),
    ("torch==2.14.1\nnumpy>=2.4\nPyYAML==6.0.4\n", "numpy>=2.4: not a plain name==version pin"),
    ("torch==2.14.1\nnumpy==2.4.6\nPyYAML==6.0.4\nnvidia-nccl==2.1; sys_platform == 'linux'\n",
     'nvidia-nccl==2.1; sys_platform == "linux": not a plain name==version pin'),
    ("torch==2.14.1\nnumpy==2.4.6\nPyYAML==6.0.4\npas==0.1.0\n", "pas: the project itself is pinned"),
])
def test_each_kind_of_disagreement_is_named(lock, problem):
    required = [Requirement(r) for r in ("torch==2.14.1", "numpy>=2", "pyyaml")]
    assert disagreements(required, read_pins(lock)) == [problem]


def test_a_lock_that_agrees_has_no_problems():
    required = [Requirement(r) for r in ("torch==2.14.1", "numpy>=2", "moto[server]>=5.0")]
    assert disagreements(required, read_pins("# comment\n\ntorch==2.14.1\nnumpy==2.4.6\nmoto==5.2.6\n")) == []


# scripts/check_results.py: .ci/run's proof that `dvc repro` in a clean clone leaves the committed results as they are

SCRIPT = ROOT / "scripts" / "check_results.py"
LOCK = """schema: '2.0'
stages:
  models:
    cmd: python stages/models.py
    deps:
    - path: src/pas/models/tiny.py
      hash: md5
      md5: {tiny}
    outs:
    - path: models/generator
      hash: md5
      md5: {generator}.dir
  generate:
    cmd: python stages/generate.py
    deps:
    - path: models/generator
      hash: md5
      md5: {generator}.dir
    params:
      params.yaml:
        size: 12
    outs:
    - path: metrics/generate.json
      hash: md5
      md5: {metrics}
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                   capture_output=True)


def check(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(repo)], capture_output=True, text=True, timeout=60)


@pytest.fixture
def repo(tmp_path) -> Path:
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("mlflow.db\n/models/\n")
    (tmp_path / "dvc.lock").write_text(LOCK.format(tiny="t1", generator="g1", metrics="m1"))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "summary.json").write_text("{}\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "results")
    return tmp_path


def test_a_clean_tree_passes_and_ignored_outputs_do_not_count(repo):
    (repo / "mlflow.db").write_text("runs")
    (repo / "models" / "generator").mkdir(parents=True)
    (repo / "models" / "generator" / "w.safetensors").write_text("w")
    proc = check(repo)
    assert proc.returncode == 0 and "clean" in proc.stdout


def test_a_changed_lock_names_the_first_cause_not_its_consequences(repo):
    (repo / "dvc.lock").write_text(LOCK.format(tiny="t1", generator="g2", metrics="m2"))
    proc = check(repo)
    assert proc.returncode == 1
    assert " M dvc.lock" in proc.stdout and "dvc.lock: 3 entries differ" in proc.stdout
    assert "stage models, outs models/generator: committed g1.dir, now g2.dir" in proc.stdout


def test_a_changed_source_dep_is_the_cause(repo):
    (repo / "dvc.lock").write_text(LOCK.format(tiny="t2", generator="g2", metrics="m1"))
    assert "stage models, deps src/pas/models/tiny.py: committed t1, now t2" in check(repo).stdout


def test_a_changed_metric_or_a_new_file_fails_too(repo):
    (repo / "metrics" / "summary.json").write_text('{"top1": 0.5}\n')
    (repo / "stray.txt").write_text("x")
    proc = check(repo)
    assert proc.returncode == 1 and " M metrics/summary.json" in proc.stdout and "?? stray.txt" in proc.stdout
    assert "dvc.lock:" not in proc.stdout
