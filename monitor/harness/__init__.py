"""Running benchmarks: the isolated worker, sampling, collectors and the parent-side runner."""
