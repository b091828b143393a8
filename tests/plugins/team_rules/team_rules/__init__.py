"""A team's perfguard rules, installed as a plain package (see pyproject.toml's entry points)."""
