"""Stage `evaluate` and what reads its results: metrics and gains, plots, the eval report, and
cross-experiment comparison (`pas compare`)."""
