"""benchmarks/gpu.sh on a lent GPU machine: each figure is saved as soon as it is measured, a failing figure is saved
as failed beside the others, a run stopped part-way keeps what it measured, each model is built once for all its
batch sizes, and the wheel list (benchmarks/gpu-wheels.txt) is all such a machine needs. Dry runs on this CPU with
the tiny models, into a temporary table: the committed benchmarks/throughput.json is never written."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from collections import defaultdict
from importlib.metadata import distributions
from pathlib import Path

import psutil
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parents[1]
GPU_SH = ROOT / "benchmarks" / "gpu.sh"
TABLE = ROOT / "benchmarks" / "throughput.json"
WHEEL_LIST = ROOT / "benchmarks" / "gpu-wheels.txt"

# The Python packages of the lent GPU machines' image ('cuda'), as the tool library's device notes list them
# (KINDS.md, "Python packages already there", read on such a machine on 2026-11-17).
DEVICE_MACHINE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split()


def normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dry_run_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a gpu.sh dry run on this CPU into a temporary table: tiny models, no timing wait."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    env.update({"DEVICE": "cpu", "ONLY": "tiny", "PYTHON": sys.executable, "TABLE": str(tmp_path / "throughput.json"),
                "SECONDS_PER_FIGURE": "0", "WHEELS": str(tmp_path / "no-wheels"), "OMP_NUM_THREADS": "1", **settings})
    return env


def figures(path: Path) -> dict[tuple, dict]:
    """The figures of a table by (task, model, batch, device)."""
    return {(f["task"], f["model"], f.get("batch"), f["device"]): f for f in json.loads(path.read_text())["figures"]}


@pytest.fixture
def committed_table():
    """Fails the test if benchmarks/throughput.json was rewritten."""
    before = hashlib.sha256(TABLE.read_bytes()).hexdigest()
    yield TABLE
    assert hashlib.sha256(TABLE.read_bytes()).hexdigest() == before, "the committed benchmarks/throughput.json changed"


@pytest.mark.slow
def test_a_failing_figure_is_saved_as_failed_and_the_others_are_kept(tmp_path, committed_table):
    table = tmp_path / "throughput.json"
    table.write_bytes(committed_table.read_bytes())
    env = dry_run_env(tmp_path, BATCHES="1 2", FAIL="tiny://clip")
    run = subprocess.run(["bash", str(GPU_SH)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stdout + run.stderr         # 1: a figure failed
    after, before = figures(table), figures(committed_table)
    for batch in (1, 2):
        sd = after[("generate", "tiny://sd", batch, "cpu")]
        assert sd["images_per_s"] > 0 and "error" not in sd
        clip = after[("clip_embed", "tiny://clip", batch, "cpu")]
        assert clip["images_per_s"] is None and clip["error"] == "RuntimeError: injected failure (--fail)"
        assert clip["gflops_per_image"] > 0                      # counted before the timing failed
    for key, figure in before.items():                           # the committed figures are all still there
        assert after[key] == figure
    assert len(after) == len(before) + 4
    assert "FAILED RuntimeError: injected failure (--fail)" in run.stdout
    assert not list(tmp_path.glob(".throughput.json.tmp-*"))


@pytest.mark.slow
def test_the_device_augmentation_figure_is_measured_and_a_failing_method_saved_as_failed(tmp_path, committed_table):
    table = tmp_path / "throughput.json"
    env = dry_run_env(tmp_path, ONLY="input", FAIL="simclr")     # input_pipeline.py --device cpu: dino and simclr
    run = subprocess.run(["bash", str(GPU_SH)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stdout + run.stderr         # 1: a figure failed
    saved = figures(table)
    assert set(saved) == {("input", "dino/device-gpu", 8, "cpu"), ("input", "simclr/device-gpu", 8, "cpu")}
    dino = saved[("input", "dino/device-gpu", 8, "cpu")]
    assert dino["images_per_s"] > 0 and dino["image_size"] == 64 and "error" not in dino
    assert saved[("input", "simclr/device-gpu", 8, "cpu")]["error"] == "RuntimeError: injected failure (--fail)"
    assert re.search(r"input +dino/device-gpu +batch +8 ", run.stdout)


@pytest.mark.slow
def test_a_run_stopped_part_way_keeps_the_figures_measured_before(tmp_path, committed_table):
    table = tmp_path / "throughput.json"
    env = dry_run_env(tmp_path, ONLY="tiny://sd", BATCHES="1 48")
    run = subprocess.Popen(["bash", str(GPU_SH)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not table.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.poll() is None and table.exists(), "the first figure was not saved while the run went on"
        # end gpu.sh's time limit now, while batch 48 is being timed: GNU timeout's timer is SIGALRM (it then sends
        # SIGTERM to the Python process and exits 124, as when LIMIT_S runs out)
        limit = [p for p in psutil.Process(run.pid).children() if p.name() == "timeout"]
        assert len(limit) == 1
        limit[0].send_signal(signal.SIGALRM)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 124, out + err
    assert "stopped by signal 15" in err and "gpu.sh: stopped at the 470 s limit (LIMIT_S) or killed" in err
    saved = figures(table)
    assert list(saved) == [("generate", "tiny://sd", 1, "cpu")]
    assert saved[("generate", "tiny://sd", 1, "cpu")]["images_per_s"] > 0
    assert re.search(r"generate +tiny://sd +batch +1 ", out)      # gpu.sh still prints what was saved
    assert not list(tmp_path.glob(".throughput.json.tmp-*"))


@pytest.fixture
def throughput_module(monkeypatch):
    """benchmarks/throughput.py imported in this process (it puts benchmarks/ on sys.path for its siblings)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    for sibling in ("generate", "pretrain"):
        monkeypatch.delitem(sys.modules, sibling, raising=False)
    spec = importlib.util.spec_from_file_location("throughput_benchmark", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    for sibling in ("generate", "pretrain"):
        sys.modules.pop(sibling, None)


@pytest.mark.slow
def test_each_model_is_built_once_for_all_its_batch_sizes(throughput_module, tmp_path, monkeypatch, capsys):
    import pas.models.tiny
    import pas.sources.generate

    builds = defaultdict(int)

    def counting(name, function):
        def wrapper(*args, **kwargs):
            if kwargs.get("device", args[-1] if args else None) != "meta":   # the FLOP count builds on meta
                builds[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(pas.models.tiny, "build_tiny_sd", counting("saved", pas.models.tiny.build_tiny_sd))
    monkeypatch.setattr(pas.sources.generate, "load_pipeline", counting("loaded", pas.sources.generate.load_pipeline))
    monkeypatch.setattr(throughput_module, "clip_model", counting("clip", throughput_module.clip_model))
    table = tmp_path / "throughput.json"
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--only", "tiny", "--batches", "1", "2",
                                      "--seconds", "0", "--table", str(table)])
    throughput_module.main()
    assert builds == {"saved": 1, "loaded": 1, "clip": 1}
    out = capsys.readouterr().out
    assert "built tiny://sd once for batch 1, 2" in out and "built tiny://clip once for batch 1, 2" in out
    saved = figures(table)
    assert {(task, model, batch) for task, model, batch, _ in saved} == {
        (task, model, batch) for task, model in (("generate", "tiny://sd"), ("clip_embed", "tiny://clip"))
        for batch in (1, 2)}
    assert all(figure["images_per_s"] > 0 for figure in saved.values())


def device_machine_view(view: Path, leave_out: set[str]) -> None:
    """A folder of links to this environment's copies of the device machine's packages (with what this environment's
    versions of them need), never to the packages of `leave_out`."""
    site = Path(sysconfig.get_paths()["purelib"])
    needs, files = {}, {}
    for dist in distributions(path=[str(site)]):
        name = normalized(dist.metadata["Name"])
        needs[name] = {normalized(Requirement(r).name) for r in dist.requires or []
                       if Requirement(r).marker is None or Requirement(r).marker.evaluate({"extra": ""})}
        files[name] = [f.parts for f in dist.files or [] if f.parts[0] != ".."]
    wanted, todo = set(), [name for name in DEVICE_MACHINE_PACKAGES if name in needs]
    while todo:
        name = todo.pop()
        if name not in wanted and name not in leave_out and name in needs:
            wanted.add(name)
            todo.extend(needs[name])
    owners = defaultdict(set)                           # a path in site-packages -> the distributions with files in it
    for name, parts_list in files.items():
        for parts in parts_list:
            for depth in range(1, len(parts) + 1):
                owners[parts[:depth]].add(name)

    def link(parts: tuple[str, ...]) -> None:
        who = owners.get(parts, set())
        if who and who <= wanted:
            view.joinpath(*parts).symlink_to(site.joinpath(*parts))
        elif who & wanted and site.joinpath(*parts).is_dir():   # a folder shared with packages left out: its parts
            view.joinpath(*parts).mkdir()
            for child in site.joinpath(*parts).iterdir():
                link((*parts, child.name))

    view.mkdir()
    for entry in site.iterdir():
        link((entry.name,))


@pytest.mark.slow
def test_the_wheel_list_is_all_a_lent_gpu_machine_needs(tmp_path, committed_table):
    """gpu.sh's own `--download-wheels` fetches benchmarks/gpu-wheels.txt from the registry; then gpu.sh installs
    those wheels and runs its dry run with a Python that sees only what a lent GPU machine has, in a fresh venv (no
    system site-packages, no PYTHONPATH, no user site): the machine's packages (DEVICE_MACHINE_PACKAGES) as this
    environment holds them, linked into a folder the venv adds as a site directory. This environment's versions
    differ from the machine's (huggingface_hub here needs httpx2, there httpx), so the packages that this
    environment's versions of them need are linked too; the packages of the wheel list never are, the machine lacks
    them: they come from the wheels alone, so a package missing from the list (wcwidth, which ftfy needs for
    open_clip) fails the run. The machine's Python is 3.12, this one's may differ: the wheels are downloaded for
    3.12 as on the machine, and installed here (pure Python, or abi3 as wcwidth's)."""
    wheels = tmp_path / "wheels"
    download = subprocess.run(["bash", str(GPU_SH), "--download-wheels", str(wheels)], capture_output=True, text=True,
                              env={**os.environ, "PYTHON": sys.executable}, timeout=300)
    assert download.returncode == 0, download.stdout + download.stderr
    listed = {normalized(re.split(r"[=<>!~;\s]", line)[0]) for line in WHEEL_LIST.read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert {normalized(w.name.split("-")[0]) for w in wheels.glob("*.whl")} == listed
    device_machine_view(tmp_path / "device-site", leave_out=listed)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    Path(venv_site, "device-machine.pth").write_text(f"import site; site.addsitedir({str(tmp_path / 'device-site')!r})\n")
    env = dry_run_env(tmp_path, PYTHON=str(python), WHEELS=str(wheels), BATCHES="1", PYTHONNOUSERSITE="1")
    run = subprocess.run(["bash", str(GPU_SH)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    saved = figures(tmp_path / "throughput.json")
    assert saved[("generate", "tiny://sd", 1, "cpu")]["images_per_s"] > 0
    assert saved[("clip_embed", "tiny://clip", 1, "cpu")]["images_per_s"] > 0
    # the same Python without the wheels: the machine really lacks them (the view does not leak them)
    bare = subprocess.run([python, "-c", "import diffusers"], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": ""})
    assert "No module named 'diffusers'" in bare.stderr
