"""Imports a package that is not installed, like a plugin whose dependency was forgotten."""

import perfguard_no_such_dependency  # noqa: F401
