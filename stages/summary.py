"""summary: the run's headline numbers (funnel, compute, top-1 per init, gains) -> metrics/summary.json."""
from pathlib import Path

from pas.core.stage import run_stage, stage_parser
from pas.evaluate.summary import headline, read_stage_metrics

KEYS = ()   # reads only other stages' metrics files


def body(args, params, run):
    summary = headline(read_stage_metrics([Path(path) for path in args.stage_metrics]))
    run.log_parent_metrics(summary)      # the pipeline run in MLflow carries the headline numbers too
    return summary


if __name__ == "__main__":
    parser = stage_parser("summary", __doc__)
    parser.add_argument("stage_metrics", nargs="+", help="metrics/<stage>.json of generate, retrieve, filter, dedup, "
                                                         "pretrain and eval")
    run_stage("summary", KEYS, parser, body)
