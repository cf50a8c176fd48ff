"""Machine settings (device, loader workers, where augmentation runs) read from the environment, never from params."""
from __future__ import annotations

import atexit
import gc
import logging
import os
import sys
import threading
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def pick_device() -> str:
    """`PAS_DEVICE` if set, else cuda when available, else cpu; applies torch's thread count (torch_threads)."""
    import torch

    use_torch_threads()

    wanted = os.environ.get("PAS_DEVICE")
    if wanted:
        return wanted
    return "cuda" if torch.cuda.is_available() else "cpu"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a SLURM/cgroup cpuset, taskset), else os.cpu_count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS, Windows
        return os.cpu_count() or 1


def num_workers(processes: int = 1) -> int:
    """Decode workers of one DataLoader: `PAS_NUM_WORKERS`, else the usable cores shared by the node's `processes`
    training processes (one per GPU), less one for the process itself; 0 (decode in the main process) at 2 or fewer
    cores each."""
    if "PAS_NUM_WORKERS" in os.environ:
        value = os.environ["PAS_NUM_WORKERS"]
        if not value.isdigit():
            from pas.core.config import PasError

            raise PasError(f"PAS_NUM_WORKERS={value!r} is not a whole number; unset it or use e.g. 8")
        return int(value)
    cores = usable_cores() // max(1, processes)
    return 0 if cores <= 2 else cores - 1


AUGMENT_CHOICES = ("auto", "cpu", "device")


def augment_on_device(device: str) -> bool:
    """Whether pretraining decodes and augments on the training device: `PAS_AUGMENT` auto (default: on a GPU),
    device, or cpu (in DataLoader workers)."""
    wanted = os.environ.get("PAS_AUGMENT", "auto")
    if wanted not in AUGMENT_CHOICES:
        from pas.core.config import PasError

        raise PasError(f"PAS_AUGMENT={wanted!r} is not one of {', '.join(AUGMENT_CHOICES)}; unset it for auto")
    if wanted == "auto":
        return device.startswith("cuda")
    return wanted == "device"


DEFAULT_THREADS = 2   # torch's CPU threads when PAS_NUM_THREADS is unset: the count the committed results were made with


def torch_threads() -> int:
    """torch's intra-op CPU threads: `PAS_NUM_THREADS`, else DEFAULT_THREADS (not the core count).

    Torch's CPU kernels split their sums by thread, so images, weights and scores are bit-identical only at one
    thread count: a fixed default lets a fresh clone on any machine reproduce the committed dvc.lock. Set
    PAS_NUM_THREADS to use more cores (results may then differ in the last bits). faiss and numpy are not limited.
    """
    value = os.environ.get("PAS_NUM_THREADS")
    if not value:
        return DEFAULT_THREADS
    if not value.isdigit() or int(value) < 1:
        from pas.core.config import PasError

        raise PasError(f"PAS_NUM_THREADS={value!r} is not a positive integer; unset it or use e.g. 2")
    return int(value)


def configure_threads() -> int:
    """Check `PAS_NUM_THREADS` and apply torch_threads() where torch runs (it is never imported here for that).

    A stage that needs no model never imports torch; one that does meets `pick_device` (or `use_torch_threads`)
    before its first tensor, and that applies the count.
    """
    threads = torch_threads()
    if "torch" in sys.modules:
        use_torch_threads()
    return threads


def use_torch_threads() -> None:
    """Set torch's intra-op threads to torch_threads() (imports torch)."""
    import torch

    if torch.get_num_threads() != torch_threads():
        torch.set_num_threads(torch_threads())


def setup_logging() -> None:
    """Log INFO lines with the module name to stderr (called by stage entry points only)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("pas").setLevel(os.environ.get("PAS_LOG_LEVEL", "INFO"))
    logging.getLogger("lightning").propagate = False   # Lightning prints its lines itself ("INFO: ..."): not twice


def quick_exit() -> None:
    """Skip the interpreter's last garbage collection over everything the process imported, at exit.

    After the atexit handlers (logging flushed, MLflow runs ended), CPython tears the modules down and collects
    every object they held: 1-2 s for a stage that imported torch + open_clip (`benchmarks/stage_overhead.py
    --repro` prints each stage's tail), paid by every stage of a `dvc repro`. gc.freeze() as the last atexit handler moves those objects
    out of the collector's reach; refcounted objects are still released and every atexit handler still runs. Only
    unreachable reference cycles are left to the OS, which frees the memory anyway; outputs are never among them
    (pas writes files atomically: closed, then renamed). Registering twice (one process running several stages,
    as tests do) keeps one handler.
    """
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)   # atexit runs handlers last-in first-out: registered early, it runs late


def dvc_ancestor() -> psutil.Process | None:
    """The nearest ancestor process running dvc (`dvc repro`, `dvc exp run`), or None for a stage run by hand."""
    for parent in psutil.Process().parents():
        try:
            cmdline = " ".join(parent.cmdline())
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        if "dvc" in Path(cmdline.split(" ")[0]).name or " -m dvc" in cmdline or "/dvc " in cmdline + " ":
            return parent
    return None


def stop_when_orphaned(parent: psutil.Process, interval: float = 2.0) -> threading.Thread:
    """Exit this process (status 3) once `parent` is gone: a stage whose dvc was killed must not go on and later
    overwrite outputs that dvc no longer tracks (outputs are written atomically, so nothing is left half-written)."""
    def watch() -> None:
        while parent.is_running():  # pid and start time: a reused pid is not mistaken for dvc
            time.sleep(interval)
        log.error("the dvc process %d that started this stage is gone; stopping without writing outputs", parent.pid)
        logging.shutdown()
        os._exit(3)

    thread = threading.Thread(target=watch, name="pas-orphan-guard", daemon=True)
    thread.start()
    return thread
