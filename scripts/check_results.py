"""CI after `dvc repro` in a clean clone: fail when git sees any change (dvc.lock, metrics/, plots/, anything
not ignored); name the first dvc.lock entry that differs from the commit and is not just a consequence of another.

    python scripts/check_results.py [REPO]      exit 0 when `git status` is clean, 1 otherwise
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

Key = tuple[str, str, str]   # (stage, section, path or params key)


def git(repo: Path, *args: str) -> str:
    """stdout of a git command in repo; a failing command raises."""
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def lock_entries(lock: dict[str, Any] | None) -> dict[Key, str]:
    """Every entry of a dvc.lock, in file order: (stage, section, path) -> its md5 (or its value, for cmd/params)."""
    entries: dict[Key, str] = {}
    for stage, body in ((lock or {}).get("stages") or {}).items():
        entries[(stage, "cmd", "")] = json.dumps(body.get("cmd"))
        for file, values in (body.get("params") or {}).items():
            for key, value in values.items():
                entries[(stage, "params", f"{file}:{key}")] = json.dumps(value, sort_keys=True)
        for section in ("deps", "outs"):
            for item in body.get(section) or []:
                entries[(stage, section, item["path"])] = item.get("md5") or json.dumps(item, sort_keys=True)
    return entries


def lock_differences(committed: dict[str, Any] | None, new: dict[str, Any] | None) -> tuple[list[Key], list[Key]]:
    """(all differing entries, those that are causes): a dep that another stage writes only follows its writer."""
    old, now = lock_entries(committed), lock_entries(new)
    differing = [key for key in [*old, *(k for k in now if k not in old)] if old.get(key) != now.get(key)]
    produced = {path for (_, section, path) in [*old, *now] if section == "outs"}
    causes = [key for key in differing
              if not (key[1] == "deps" and any(key[2] == out or key[2].startswith(out + "/") for out in produced))]
    return differing, causes


def describe(key: Key, committed: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    """One line: stage, section and path of an entry, committed vs new value."""
    stage, section, path = key
    old, now = lock_entries(committed).get(key, "(absent)"), lock_entries(new).get(key, "(absent)")
    return f"stage {stage}, {section}{' ' + path if path else ''}: committed {old}, now {now}"


def main(argv: list[str]) -> int:
    """Print what changed and return 1, or 0 when the working tree is clean."""
    repo = Path(argv[0] if argv else ".")
    status = git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()
    if not status:
        print("results: git status is clean; the committed results reproduce")
        return 0
    print(f"results: git status shows {len(status)} changed or new file(s) after dvc repro:")
    print("\n".join(f"  {line}" for line in status))
    lock = repo / "dvc.lock"
    shown = subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=repo, capture_output=True, text=True)
    committed = yaml.safe_load(shown.stdout) if shown.returncode == 0 else None
    new = yaml.safe_load(lock.read_text()) if lock.is_file() else None
    differing, causes = lock_differences(committed, new)
    if differing:
        print(f"dvc.lock: {len(differing)} entries differ from the commit; the first:")
        print(f"  {describe((causes or differing)[0], committed, new)}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
