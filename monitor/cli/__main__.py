"""`python -m monitor.cli`: the `perfguard` command, for environments without its script on PATH."""

from monitor.cli import main

main(prog_name="perfguard")
