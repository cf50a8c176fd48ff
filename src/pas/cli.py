"""`pas` command: small user-facing tools around the pipeline (`dvc repro` runs the stages)."""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("pas.curation.export", "export the curated dataset (HF parquet, ImageFolder, WebDataset)"),
    "compare": ("pas.evaluate.compare", "compare experiments from MLflow: table + plot of accuracy vs size"),
    "plan": ("pas.sources.costs", "what a run will cost before it starts: GPU-hours, wall time, disk per stage"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `pas <command> ...` to the command's own `main(argv)`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        lines = [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: pas <command> [options]\n\ncommands:\n" + "\n".join(lines))
        return 0 if args and args[0] in ("-h", "--help") else 2
    module = __import__(COMMANDS[args[0]][0], fromlist=["main"])
    run: Callable[[Sequence[str]], object] = module.main
    result = run(args[1:])
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
