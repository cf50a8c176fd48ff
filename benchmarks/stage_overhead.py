"""What a stage pays before its work starts, next to a bare `python -c pass`; and how long `pas show` / `pas plan` take.

    python benchmarks/stage_overhead.py [-n 5] [--stages summary,concepts] [--tree PATH] [--repro]

The source tree (default: this repository; git's files, without dvc.lock and the committed results except
metrics/summary.json, which `pas show` reads) is copied into a temporary git repository, so nothing here is touched.
For every stage of dvc.yaml, its command (as DVC renders it) runs N times there with PAS_LOG_LEVEL=DEBUG; a run's
start-up is the wall time from just before the process is spawned to the moment its stderr carries the runner's line
`<stage>: work starts` (pas.core.stage.run_stage logs it just before it calls the stage's body: arguments parsed,
params loaded and checked, every import the stage script makes at the top done). The process is killed right there,
so no stage needs its inputs and nothing is written. `python -c pass` (start to exit) is timed in the same way, in
turn with the stages, and its median is subtracted: "overhead" is what pas adds to starting Python.
`pas show` and `pas plan` are timed start to exit (an MLflow store with one finished pipeline run is created first,
as a `dvc repro` leaves one). With --repro the whole offline `dvc repro` runs once in the copy and is timed too,
with each stage's seconds in it and the part after the stage's `done` line (its process exiting, then DVC hashing,
caching and writing the lock for it).

Figures are medians (min-max) of N runs on whatever machine runs this, wall time and CPU time (user + system of the
process, which a shared machine's load inflates less); quote them with the machine and the load average printed.
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# stages whose work loads no model and trains nothing: the goal is at most 2 s of overhead for them
NO_MODEL = ("concepts", "sample_data", "report", "evaluate", "summary")
GOAL_STAGE_S, GOAL_COMMAND_S, GOAL_REPRO_S = 2.0, 3.0, 150.0
KEPT_RESULTS = ("metrics/summary.json",)       # pas show reads it
LEFT_OUT = ("dvc.lock", "metrics/", "plots/")  # committed results: a fresh copy reproduces them


def copy_tree(source: Path, dest: Path) -> Path:
    """`source`'s git files (tracked and untracked, not ignored), results left out, as a fresh one-commit repository."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=source,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if (name.startswith(LEFT_OUT) or name == "dvc.lock") and name not in KEPT_RESULTS:
            continue
        if (source / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def stage_commands(repo: Path) -> dict[str, str]:
    """{stage: command} as DVC renders dvc.yaml (vars and params interpolated), in dvc.yaml's order."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return {stage.name: stage.cmd for stage in dvc.index.stages}


def time_to_marker(cmd: str, marker: str | None, cwd: Path, env: dict[str, str],
                   limit: float = 300) -> tuple[float, float]:
    """(wall seconds, CPU seconds) from spawning `cmd` (no shell: the process is this one's child, so its CPU time,
    user + system, is counted once it is reaped) to a stderr line ending with `marker` (then it is killed), or to
    its exit when `marker` is None. A process that exits without the marker is an error naming its last line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(shlex.split(cmd), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)

    def spent() -> tuple[float, float]:
        wall = time.perf_counter() - started
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    try:
        if marker is None:
            proc.communicate(timeout=limit)
            return spent()
        last = ""
        for line in proc.stderr:
            if line.rstrip().endswith(marker):
                return spent()
            last = line.strip() or last
        proc.wait(timeout=limit)
        raise RuntimeError(f"{cmd.split()[1]} exited ({proc.returncode}) before '{marker}': {last}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()


def summarize(values: list[tuple[float, float]], cpu: bool = False) -> tuple[float, float, float]:
    """(median, min, max) of the wall (or, with `cpu`, the CPU) seconds."""
    picked = [v[1] if cpu else v[0] for v in values]
    return statistics.median(picked), min(picked), max(picked)


def seed_store(repo: Path, env: dict[str, str]) -> None:
    """One finished pipeline run in the copy's MLflow store (its schema made), as after a `dvc repro`."""
    code = ("from pas.core.tracking import stage_run\n"
            "with stage_run('seed', {}, 'pas-birds', {'size': 300}):\n    pass\n")
    subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, check=True, capture_output=True)


Repro = tuple[float, int, dict[str, tuple[float, float | None]]]


def time_repro(repo: Path, env: dict[str, str]) -> Repro:
    """(wall seconds, exit status, {stage: (seconds in the repro, seconds from its `<stage> done` line on)}) of one
    whole `dvc repro`, from the times its lines arrive. A stage's seconds run from DVC's `Running stage` line to the
    next stage's (or dvc's exit); the tail after `done` is the stage process's exit plus DVC's hashing, caching and
    lock writing for it."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    marks: list[tuple[str, float, float | None]] = []     # (stage, started, its done line)
    for line in proc.stdout:
        now = time.perf_counter() - started
        if line.startswith("Running stage '"):
            marks.append((line.split("'")[1], now, None))
        elif marks and f"pas.core.stage: {marks[-1][0]} done" in line:
            marks[-1] = (marks[-1][0], marks[-1][1], now)
    status = proc.wait()
    total = time.perf_counter() - started
    ends = [m[1] for m in marks[1:]] + [total]
    stages = {name: (end - begin, None if done is None else end - done)
              for (name, begin, done), end in zip(marks, ends)}
    return total, status, stages


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="runs per stage and command (median reported)")
    parser.add_argument("--stages", help="comma-separated stages to time (default: every stage of dvc.yaml)")
    parser.add_argument("--tree", type=Path, default=REPO, help="source tree to copy and time (default: this repo)")
    parser.add_argument("--repro", action="store_true", help="also time one whole offline `dvc repro` in the copy")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="pas-overhead-"))
    repo = copy_tree(args.tree.resolve(), root / "repo")
    env = {**os.environ, "PYTHONPATH": str(repo / "src"), "PAS_LOG_LEVEL": "DEBUG", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("VIRTUAL_ENV_PROMPT", None)
    try:
        commands = stage_commands(repo)
        chosen = args.stages.split(",") if args.stages else list(commands)
        unknown = sorted(set(chosen) - set(commands))
        if unknown:
            parser.error(f"unknown stage(s) {unknown}; choose from {', '.join(commands)}")
        seed_store(repo, env)
        python = shlex.quote(sys.executable)
        bare = f"{python} -c pass"
        time_to_marker(f"{python} -c 'import torch, mlflow.tracking'", None, repo, env)   # warm the page cache once
        load_before = os.getloadavg()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in chosen}
        baseline: list[tuple[float, float]] = []
        for _ in range(args.n):                       # interleaved, so a drift in the machine's speed hits all alike
            baseline.append(time_to_marker(bare, None, repo, env))
            for name in chosen:
                cmd = commands[name].replace("python ", f"{python} ", 1)
                times[name].append(time_to_marker(cmd, f"{name}: work starts", repo, env))
        plain = {k: v for k, v in env.items() if k != "PAS_LOG_LEVEL"}
        tools = {f"pas {name}": [time_to_marker(f"{python} -m pas.cli {name}", None, repo, plain)
                                 for _ in range(args.n)] for name in ("show", "plan")}
        repro = time_repro(repo, plain) if args.repro else None
        print_table(times, baseline, tools, repro, args.n, args.tree.resolve(), (load_before, os.getloadavg()))
    finally:
        if args.keep:
            print(f"copy kept: {repo}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def print_table(times: dict[str, list[tuple[float, float]]], bare: list[tuple[float, float]],
                tools: dict[str, list[tuple[float, float]]], repro: Repro | None, runs: int, tree: Path,
                load: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    """The markdown table the README quotes: wall seconds (median, min-max) and the median CPU seconds (user +
    system), which a loaded machine inflates less; goals are judged on the wall median."""
    base, base_cpu = summarize(bare), summarize(bare, cpu=True)
    print(f"Stage start-up: process spawn -> `<stage>: work starts` (median of {runs} runs, min-max), {tree}; "
          f"{os.cpu_count()} CPUs, load average {load[0][0]:.1f} before, {load[1][0]:.1f} after")
    print(f"`python -c pass` (start to exit): {base[0]:.2f} s ({base[1]:.2f}-{base[2]:.2f}), "
          f"CPU {base_cpu[0]:.2f} s\n")
    print("| stage | needs a model | start-up s | CPU s | overhead s (minus python -c pass) | goal |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, values in times.items():
        (median, low, high), cpu = summarize(values), summarize(values, cpu=True)[0]
        light = name in NO_MODEL
        over = median - base[0]
        goal = ("met" if over <= GOAL_STAGE_S else "missed") + f" (<= {GOAL_STAGE_S:g} s)" if light else "-"
        print(f"| {name} | {'no' if light else 'yes'} | {median:.2f} ({low:.2f}-{high:.2f}) | {cpu:.2f} | {over:.2f} "
              f"| {goal} |")
    print("\n| command | start to exit s | CPU s | goal |")
    print("| --- | --- | --- | --- |")
    for name, values in tools.items():
        (median, low, high), cpu = summarize(values), summarize(values, cpu=True)[0]
        goal = ("met" if median <= GOAL_COMMAND_S else "missed") + f" (<= {GOAL_COMMAND_S:g} s)"
        print(f"| {name} | {median:.2f} ({low:.2f}-{high:.2f}) | {cpu:.2f} | {goal} |")
    if repro is None:
        return
    total, status, stages = repro
    goal = ("met" if total <= GOAL_REPRO_S and status == 0 else "missed") + f" (<= {GOAL_REPRO_S:g} s)"
    print(f"| dvc repro (offline, once) | {total:.1f} | - | exit {status}; {goal} |")
    print("\n| stage in that dvc repro | seconds | of which after its `done` line (exit + DVC bookkeeping) |")
    print("| --- | --- | --- |")
    for name, (spent, tail) in stages.items():
        print(f"| {name} | {spent:.1f} | {'-' if tail is None else f'{tail:.1f}'} |")


if __name__ == "__main__":
    raise SystemExit(main())
