"""Machine settings (device, loader workers) read from the environment, never from params."""
from __future__ import annotations

import logging
import os


def pick_device() -> str:
    """`PAS_DEVICE` if set, else cuda when available, else cpu."""
    import torch

    wanted = os.environ.get("PAS_DEVICE")
    if wanted:
        return wanted
    return "cuda" if torch.cuda.is_available() else "cpu"


def num_workers() -> int:
    """Decode workers for DataLoaders: `PAS_NUM_WORKERS`, else 0 on <=2 cores, else cores - 1 (max 8)."""
    if "PAS_NUM_WORKERS" in os.environ:
        return int(os.environ["PAS_NUM_WORKERS"])
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def setup_logging() -> None:
    """Log INFO lines with the module name to stderr (called by stage entry points only)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("pas").setLevel(os.environ.get("PAS_LOG_LEVEL", "INFO"))
