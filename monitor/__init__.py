"""Measuring models and running the service: config, registry, harness, CLI."""
