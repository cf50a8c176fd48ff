"""pas: Precision at Scale."""
