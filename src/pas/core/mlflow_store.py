"""Where the MLflow store is: the URI pas logs to and reads from, and a moved repository's artifact locations
re-pointed at itself."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pas.core.config import PasError

log = logging.getLogger(__name__)

EXP_WORKSPACE = (".dvc", "tmp", "exps")   # where DVC runs queued and --temp experiments: <repo>/.dvc/tmp/exps/<tmp>


def tracking_uri(cwd: str | Path | None = None) -> str:
    """The tracking URI: MLFLOW_TRACKING_URI if set, else the repository's SQLite file mlflow.db (absolute).

    A queued (`dvc exp run --queue`) or `--temp` experiment runs in a throw-away copy under
    <repo>/.dvc/tmp/exps/; it logs into <repo>/mlflow.db so that sweeps land in one store.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    here = Path(cwd or os.getcwd()).absolute()
    parts = here.parts
    for i in range(len(parts) - len(EXP_WORKSPACE)):
        if parts[i:i + len(EXP_WORKSPACE)] == EXP_WORKSPACE:
            return f"sqlite:///{Path(*parts[:i]) / 'mlflow.db'}"
    return f"sqlite:///{here / 'mlflow.db'}"   # absolute: MLflow caches one store per URI string in a process


def open_client(uri: str) -> Any:
    """An MlflowClient of `uri`. A SQLite store is opened under a lock shared by this machine's processes.

    Opening a new (or empty) SQLite file makes MLflow create its tables by running its schema migrations, and two
    processes doing that at once (two queue workers' first stages: `dvc queue start -j 2` on a fresh clone) fail:
    "table ... already exists", "duplicate column name", and now and then a file left half-migrated for good
    (`_alembic_tmp_experiments` stays behind and every later stage tracks nothing). The lock makes one process create
    the tables and the others find them; once they exist, holding it costs little.
    """
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    from filelock import FileLock

    with FileLock(store_lock_path(Path(uri.removeprefix("sqlite:///"))), timeout=120):
        return MlflowClient(tracking_uri=uri)


def store_lock_path(db: Path) -> Path:
    """The lock file of a SQLite store: in the temporary folder (not beside the file, where git and DVC would see
    it), named by the store's resolved path so every process that opens the same file takes the same lock."""
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(db.absolute().resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"pas-mlflow-{digest}.lock"


def read_tracking_uri(uri: str | None = None) -> str:
    """The store a reader (pas compare, pas show) opens: `uri`, else tracking_uri(). A SQLite file that does not
    exist is a PasError naming it: reading never creates an empty mlflow.db (MLflow would)."""
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise PasError(f"no MLflow store {uri.removeprefix('sqlite:///')}: run pas in the repository (after dvc repro "
                       "or dvc exp run), or point MLFLOW_TRACKING_URI / --tracking-uri at the store")
    return uri


def relocate_artifacts(client: Any, root: Path) -> int:
    """Point local artifact locations recorded under another folder's mlruns/ at `root`/mlruns (the repository's
    own): a moved or copied repository keeps logging into itself. Returns how many records were changed.

    MLflow stores absolute paths (its SQLite store resolves ./mlruns against the working directory of whoever
    created the experiment, e.g. a queued experiment's temporary folder), so they are re-resolved per repository.
    """
    from mlflow.store.tracking.dbmodels import models

    here = (root.absolute() / "mlruns").as_posix()
    tables = [(models.SqlExperiment, "artifact_location"), (models.SqlRun, "artifact_uri")]
    if hasattr(models, "SqlLoggedModel"):
        tables.append((models.SqlLoggedModel, "artifact_location"))
    changed = 0
    with client._tracking_client.store.ManagedSessionMaker(read_only=False) as session:
        experiments = session.query(models.SqlExperiment).all()
        if all(_moved(exp.artifact_location, here) is None for exp in experiments):
            return 0
        for table, column in tables:
            for row in session.query(table).filter(getattr(table, column).like("%/mlruns/%")):
                if (new := _moved(getattr(row, column), here)) is not None:
                    setattr(row, column, new)
                    changed += 1
    log.info("MLflow artifact locations of %d records moved to %s (the repository was moved or copied)", changed, here)
    return changed


def _moved(location: str | None, here: str) -> str | None:
    """`location` (a local path or file: URI ending in .../mlruns/<rest>) under `here` instead, or None if it is
    already there or not a local mlruns path."""
    if not location:
        return None
    path = location.removeprefix("file://") if location.startswith("file://") else location
    if "://" in path or ":" in path.split("/", 1)[0] or "/mlruns/" not in path:
        return None
    rest = path[path.rindex("/mlruns/") + len("/mlruns"):]
    return None if path.startswith(here + "/") else here + rest


def repo_store(uri: str) -> Path | None:
    """The folder of the repository's own SQLite store when pas chose it (no MLFLOW_TRACKING_URI), else None."""
    if os.environ.get("MLFLOW_TRACKING_URI") or not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).absolute().parent
