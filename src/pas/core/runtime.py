"""Machine settings (device, loader workers, where augmentation runs) read from the environment, never from params."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def pick_device() -> str:
    """`PAS_DEVICE` if set, else cuda when available, else cpu."""
    import torch

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


def configure_threads() -> int | None:
    """Apply `PAS_NUM_THREADS` (torch intra-op CPU threads) if set; return it."""
    value = os.environ.get("PAS_NUM_THREADS")
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        from pas.core.config import PasError

        raise PasError(f"PAS_NUM_THREADS={value!r} is not a positive integer; unset it or use e.g. 2")
    import torch

    torch.set_num_threads(int(value))
    return int(value)


def setup_logging() -> None:
    """Log INFO lines with the module name to stderr (called by stage entry points only)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("pas").setLevel(os.environ.get("PAS_LOG_LEVEL", "INFO"))
    logging.getLogger("lightning").propagate = False   # Lightning prints its lines itself ("INFO: ..."): not twice


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
