"""A bad top-level param, a misspelt key or a hand-edited --size stops a stage with one line and exit 2,
before any work or tracking (no MLflow store is created)."""
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("change, extra, message", [
    ({"seed": "abc"}, [], "pas generate: error: seed='abc' must be an integer"),
    ({"size": "2.5.1k"}, [], "pas generate: error: size='2.5.1k' is not a size"),
    ({"sise": 5000}, [], "pas generate: error: unknown top-level key 'sise'"),
    ({}, ["--size", "400"], "pas generate: error: --size 400 differs from size=300"),
])
def test_bad_params_stop_a_stage_with_one_line(tmp_path, change, extra, message):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**PARAMS, **change}))
    done = subprocess.run([sys.executable, str(REPO / "stages" / "generate.py"), "--params", str(params),
                           "--concepts", "x.json", "--generator", "none", "--out", "out", *extra],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(message), done.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()


def test_a_missing_input_file_stops_a_stage_with_one_line_naming_it(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    done = subprocess.run([sys.executable, str(REPO / "stages" / "generate.py"), "--params", str(params),
                           "--concepts", "nope.json", "--generator", "none", "--out", "out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("pas generate: error: no such file or folder: nope.json (check the "
                                                     "path, or run dvc repro to build it)")
    assert not (tmp_path / "out").exists()
    debug = subprocess.run([sys.executable, str(REPO / "stages" / "generate.py"), "--params", str(params),
                            "--concepts", "nope.json", "--generator", "none", "--out", "out"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PAS_LOG_LEVEL": "DEBUG"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr
