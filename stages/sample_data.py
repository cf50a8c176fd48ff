"""sample_data: the offline default pool folder and downstream set, from images shipped in packages."""
from pathlib import Path

from pas.core.config import build
from pas.core.atomic import atomic_dir
from pas.core.stage import run_stage, stage_parser
from pas.data.sample_data import SampleDataConfig, build_sample_data

KEYS = ("sample_data",)


def body(args, params, run):
    cfg = build(SampleDataConfig, params.get("sample_data"), "sample_data")
    with atomic_dir(args.pool) as pool, atomic_dir(args.downstream) as downstream:
        return build_sample_data(Path(pool), Path(downstream), cfg)


if __name__ == "__main__":
    parser = stage_parser("sample_data", __doc__)
    parser.add_argument("--pool", required=True, help="folder of unlabeled pool images to write")
    parser.add_argument("--downstream", required=True, help="folder of labeled downstream parquet sets")
    run_stage("sample_data", KEYS, parser, body)
