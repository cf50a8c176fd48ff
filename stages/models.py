"""models: resolve every model named in params to a pinned local directory + models/lock.json."""
from pathlib import Path

from pas.core.config import build
from pas.core.shards import atomic_dir, write_json
from pas.core.stage import run_stage, stage_parser
from pas.models.registry import ROLES, ModelsConfig, check_names, resolve

KEYS = ("models",)


def body(args, params, run):
    cfg = build(ModelsConfig, params.get("models"), "models")
    check_names(cfg)  # every name is checked before anything is downloaded or built
    lock = {}
    for role in ROLES:
        dest = Path(getattr(args, role))
        with atomic_dir(dest) as tmp:
            lock[role] = {**resolve(role, getattr(cfg, role), Path(tmp)), "path": str(dest)}
    write_json(lock, args.lock)
    return {"models": len(lock)}


if __name__ == "__main__":
    parser = stage_parser("models", __doc__)
    parser.add_argument("--generator", required=True, help="folder for the resolved text-to-image model")
    parser.add_argument("--clip", required=True, help="folder for the resolved CLIP model")
    parser.add_argument("--lock", required=True, help="lock file to write")
    run_stage("models", KEYS, parser, body)
