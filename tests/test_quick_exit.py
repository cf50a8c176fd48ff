"""A stage process skips the interpreter's last collection at exit (pas.core.runtime.quick_exit), after every atexit
handler has run and with its outputs complete."""
import json
import subprocess
import sys
import textwrap

from conftest import REPO

STAGE = textwrap.dedent("""
    import atexit, gc, json, sys
    from pathlib import Path
    from pas.core.stage import run_stage, stage_parser

    # registered before run_stage, so it runs after run_stage's handler (atexit is last-in first-out)
    atexit.register(lambda: print(json.dumps({"frozen": gc.get_freeze_count()}), flush=True))
    # a handler registered after it still runs, and sees nothing frozen yet
    def body(args, params, run):
        atexit.register(lambda: Path("late.txt").write_text(str(gc.get_freeze_count())))
        return {"ok": 1}
    run_stage("probe", (), stage_parser("probe", "probe"), body, argv=["--params", sys.argv[1]])
""")


def test_a_stage_freezes_the_collector_last_and_its_outputs_and_handlers_are_complete(tmp_path):
    (tmp_path / "params.yaml").write_text("size: 300\nseed: 0\n")
    script = tmp_path / "probe.py"
    script.write_text(STAGE)
    env = {"PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYTHONPATH": str(REPO / "src"), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "params.yaml")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["frozen"] > 10_000   # the imported world was frozen
    assert (tmp_path / "late.txt").read_text() == "0"                          # handlers after it ran, before it
    assert json.loads((tmp_path / "metrics" / "probe.json").read_text()) == {"ok": 1}
    assert "probe done" in done.stderr
