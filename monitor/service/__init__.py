"""The service side: benchmarking now (and, later, on a schedule) and storing what it measured."""
