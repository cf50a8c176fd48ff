"""`pas` command: small user-facing tools around the pipeline (`dvc repro` runs the stages).

    pas --version
    pas [-q | -v] <command> [options]      pas <command> --help for its options and defaults
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("pas.curation.export", "export the curated dataset (HF parquet, ImageFolder, WebDataset)"),
    "compare": ("pas.evaluate.compare", "compare experiments from MLflow: table + plot of accuracy vs size"),
    "plan": ("pas.evaluate.costs", "what a run will cost before it starts: GPU-hours, wall time, disk per stage"),
    "show": ("pas.evaluate.show", "one page for the workspace or an experiment: params changed, funnel, headline"),
    "recipe": ("pas.core.recipes", "list the official recipes of recipes/, or print one as dvc exp run -S flags"),
    "share": ("pas.core.share", "push DVC's run-cache with its outputs, so colleagues' dvc exp run --pull restores"),
    "pool": ("pas.sources.pool_embed", "pool embed FOLDER|URL-LIST OUT: embed a team's pool once (clip-retrieval layout)"),
}
LEVELS = {"-q": "WARNING", "--quiet": "WARNING", "-v": "DEBUG", "--verbose": "DEBUG"}


def usage() -> str:
    """The top-level help: global options and the commands."""
    lines = [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return ("usage: pas [-h] [--version] [-q | -v] <command> [options]\n\n"
            "options:\n  -h, --help     show this help and exit\n  --version      print pas's version and exit\n"
            "  -q, --quiet    warnings and errors only (PAS_LOG_LEVEL=WARNING)\n"
            "  -v, --verbose  debug messages, and a traceback with every error (PAS_LOG_LEVEL=DEBUG)\n\n"
            "commands:\n" + "\n".join(lines) + "\n\n`pas <command> --help` shows a command's options and defaults.")


def version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("pas")
    except PackageNotFoundError:
        return "unknown (not installed)"


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports POLLERR on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):   # no poll (Windows), no real stdout (a test's capture)
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch `pas [-q|-v] <command> ...` to the command's own `main(argv)`; expected errors are one line."""
    args = list(sys.argv[1:] if argv is None else argv)
    while args and args[0] in LEVELS:   # global options come before the command
        os.environ["PAS_LOG_LEVEL"] = LEVELS[args.pop(0)]   # read by setup_logging in this process
    if not args:
        print(usage(), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(f"pas {version()}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        known = "see pas --help" if name.startswith("-") else f"choose one of: {', '.join(COMMANDS)}"
        print(f"pas: unknown {'option' if name.startswith('-') else 'command'} {name!r}; {known}", file=sys.stderr)
        return 2
    from pas.core.config import PasError, user_error

    module = __import__(COMMANDS[name][0], fromlist=["main"])
    run: Callable[[Sequence[str]], object] = module.main
    try:
        result = run(args[1:])
        sys.stdout.flush()                 # inside the try: a reader that stopped early is seen here
    except BrokenPipeError:                # `pas show | head`: the reader has what it wanted
        if not stdout_reader_gone():       # a broken connection elsewhere (a DVC remote) is a real failure
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # nothing left to flush at exit
        os.close(devnull)
        return 0
    except (PasError, FileNotFoundError) as err:   # expected: bad input, missing file; anything else is a bug
        if os.environ.get("PAS_LOG_LEVEL") == "DEBUG":
            raise
        print(f"pas {name}: error: {user_error(err)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
