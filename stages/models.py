"""models: resolve every model a run needs (generator, CLIP, finetune's timm baselines) to a pinned local folder.

Each folder carries its lock entry (name, source, hub revision, content hash); models/lock.json gathers them. Hub
files come through the Hugging Face cache (HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE=1 with a filled cache), so no later
stage touches the network.
"""
from pathlib import Path

from pas.core.config import build
from pas.core.recipes import with_recipe
from pas.core.shards import atomic_dir, write_json
from pas.core.stage import run_stage, stage_parser
from pas.models.baselines import timm_baselines
from pas.models.fetch import fetch_hub, resolve_baseline
from pas.models.registry import ROLES, ModelsConfig, check_names, resolve

KEYS = ("models", "finetune.inits", "finetune.recipe")


def body(args, params, run):
    cfg = build(ModelsConfig, params.get("models"), "models")
    check_names(cfg)  # every name is checked before anything is downloaded or built
    wanted = timm_baselines(with_recipe(params, "finetune"))
    lock = {}
    for role in ROLES:
        dest = Path(getattr(args, role))
        with atomic_dir(dest) as tmp:
            lock[role] = {**resolve(role, getattr(cfg, role), Path(tmp), fetch_hub), "path": str(dest)}
    root = Path(args.baselines)
    with atomic_dir(root) as tmp:  # always written (empty without timm baselines): a declared output
        entries = {init: {**resolve_baseline(init, arch, Path(tmp) / init), "path": str(root / init)}
                   for init, arch in wanted.items()}
    if entries:
        lock["baselines"] = entries
    write_json(lock, args.lock)
    return {"models": len(ROLES) + len(entries)}


if __name__ == "__main__":
    parser = stage_parser("models", __doc__)
    parser.add_argument("--generator", required=True, help="folder for the resolved text-to-image model")
    parser.add_argument("--clip", required=True, help="folder for the resolved CLIP model")
    parser.add_argument("--baselines", required=True,
                        help="folder for finetune's timm ImageNet baselines (one subfolder per init name)")
    parser.add_argument("--lock", required=True, help="lock file to write")
    run_stage("models", KEYS, parser, body)
