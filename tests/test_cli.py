"""CLI manners: `pas --version`, unknown commands, -q/-v, help with prog names and defaults, one-line errors that
leave no files behind, and no library noise."""
import logging
import os
import subprocess
import sys
import warnings
from importlib.metadata import version

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_image
from pas.cli import COMMANDS, main


PARSERS_TO_SWITCH = ()   # every user command builds its parser with command_parser


def pas(*args, cwd):
    """`pas ARGS` as a user runs it, in `cwd`, without any tracking URI of the test session."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PAS_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-m", "pas.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture
def manifest(tmp_path):
    """A two-image curated manifest whose shard path is relative (as in the repository: data/...)."""
    from pas.core.shards import encode_jpeg, write_shard

    repo = tmp_path / "repo"
    write_shard(repo / "data" / "c-000000.tar", [(f"k{i}", encode_jpeg(make_image(i)), {}) for i in range(2)])
    path = repo / "data" / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist([{"key": f"k{i}", "shard": "data/c-000000.tar", "source": "generated",
                                          "concept": "cat", "prompt": "a cat", "seed": i} for i in range(2)]), path)
    return path


def test_help_lists_commands_and_global_options(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS) and "--version" in out and "-q, --quiet" in out


def test_version_is_the_installed_packages(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"pas {version('pas')}\n"


@pytest.mark.parametrize("argv, said", [(["nope"], f"unknown command 'nope'; choose one of: {', '.join(COMMANDS)}"),
                                        (["--nope"], "unknown option '--nope'; see pas --help")])
def test_an_unknown_command_or_option_is_one_line_and_exit_2(capsys, argv, said):
    assert main(argv) == 2
    assert capsys.readouterr().err == f"pas: {said}\n"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_commands_help_names_it_pas_command_and_shows_defaults(capsys, name):
    with pytest.raises(SystemExit, match="^0$"):
        main([name, "--help"])
    out = capsys.readouterr().out
    manners = out.startswith(f"usage: pas {name} ") and "(default: " in out
    if not manners and name in PARSERS_TO_SWITCH:
        pytest.xfail(f"{COMMANDS[name][0]} should build its parser with pas.core.stage.command_parser")
    assert manners


@pytest.mark.parametrize("args, said", [
    (["export", "--out", "out"], "pas export: error: manifest data/curated/manifest.parquet not found"),
    (["plan"], "pas plan: error: params file params.yaml not found"),
    (["compare"], "pas compare: error: no MLflow store"),
    (["share"], "pas share: error: "),
    (["recipe"], "pas recipe: error: no recipes folder"),
])
def test_expected_errors_outside_a_repository_are_one_line_and_create_nothing(tmp_path, args, said):
    proc = pas(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(said)
    assert list(tmp_path.iterdir()) == []


def test_export_with_shards_it_cannot_reach_is_one_line_and_writes_nothing(manifest, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = pas("export", "--curated", str(manifest), "--out", "out", cwd=elsewhere)   # shard paths are repo-relative
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"pas export: error: 1 shard(s) listed in {manifest} not found (e.g. data/c-000000.tar); shard paths are "
        "relative to the repository root: run pas export there, after dvc pull")
    assert list(elsewhere.iterdir()) == []


def test_quiet_hides_info_and_verbose_shows_the_traceback(manifest):
    repo = manifest.parent.parent
    plain = pas("export", "--curated", "data/manifest.parquet", "--out", "a", "--formats", "webdataset", cwd=repo)
    quiet = pas("-q", "export", "--curated", "data/manifest.parquet", "--out", "b", "--formats", "webdataset",
                cwd=repo)
    assert plain.returncode == quiet.returncode == 0
    assert "INFO pas.curation.export: exported 2 images" in plain.stderr and " INFO " not in quiet.stderr
    verbose = pas("-v", "export", "--curated", "missing.parquet", "--out", "c", cwd=repo)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr and "FileNotFoundError" in verbose.stderr


def test_an_img2dataset_shards_metadata_parquet_is_not_reported_as_a_bad_file(tmp_path, caplog):
    from pas.core.shards import encode_jpeg, write_shard
    from pas.sources.pool_sources import iter_pool

    write_shard(tmp_path / "00000.tar", [("000000000", encode_jpeg(make_image(0)), {})])
    pq.write_table(pa.table({"key": ["000000000"], "url": ["https://x/0.jpg"], "caption": ["c"],
                             "status": ["success"]}), tmp_path / "00000.parquet")            # img2dataset's layout
    pq.write_table(pa.table({"text": ["no images here"]}), tmp_path / "notes.parquet")   # a really odd file
    with caplog.at_level(logging.WARNING, logger="pas"):
        items = list(iter_pool(tmp_path))
    assert [item.kind for item in items] == ["tar"]
    assert [r.getMessage().split(" has ")[0] for r in caplog.records] == [str(tmp_path / "notes.parquet")]


def test_the_tiny_generator_loads_without_diffusers_warnings(tmp_path):
    from diffusers import StableDiffusionPipeline

    from pas.models.tiny import build_tiny_sd

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_tiny_sd(tmp_path / "sd")
        StableDiffusionPipeline.from_pretrained(str(tmp_path / "sd"))
    assert [str(w.message) for w in caught if "steps_offset" in str(w.message) or "outdated" in str(w.message)] == []


@pytest.mark.parametrize("order", ["setup first", "lightning first"])
def test_lightning_lines_are_printed_once(tmp_path, order):
    steps = ["from pas.core.runtime import setup_logging", "setup_logging()", "import lightning.pytorch"]
    if order == "lightning first":
        steps = [steps[2], *steps[:2]]
    code = "; ".join([*steps, "from lightning.fabric.utilities.seed import seed_everything", "seed_everything(3)"])
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=True)
    assert proc.stderr.count("Seed set to 3") == 1


def test_share_without_a_dvc_remote_is_dvcs_one_line(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    for args, said in ((["share"], "no remote specified"), (["share", "-r", "nope"], "remote 'nope' doesn't exist")):
        proc = pas(*args, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = [line for line in proc.stderr.splitlines() if line.startswith("pas share")]
        assert line.startswith("pas share: error: config file error: ") and said in line


def test_a_reader_that_stops_early_gets_no_traceback():
    """`pas recipe dino_vits16 | head -1`: the pipe is closed before pas writes; pas exits 0 without a traceback."""
    from conftest import REPO

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PAS_LOG_LEVEL")}
    proc = subprocess.Popen([sys.executable, "-m", "pas.cli", "recipe", "dino_vits16"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()                                    # the reader is gone before pas has started up
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and stderr == ""


def test_only_a_closed_stdout_counts_as_a_reader_that_stopped():
    """A BrokenPipeError elsewhere (a DVC remote's connection) must stay an error: pas checks stdout's own pipe."""
    code = "import sys; from pas.cli import stdout_reader_gone; print(stdout_reader_gone(), file=sys.stderr)"
    read_end, write_end = os.pipe()
    said = []
    for close_reader in (False, True):
        if close_reader:
            os.close(read_end)
        proc = subprocess.run([sys.executable, "-c", code], stdout=write_end, capture_output=False,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=True)
        said.append(proc.stderr.strip())
    os.close(write_end)
    assert said == ["False", "True"]
