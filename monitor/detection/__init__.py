"""Change detection over stored benchmark history: change points, findings, baselines, confirmation."""
