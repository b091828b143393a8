"""The `perfguard` group: global options, and every command's failure as one line and a documented exit code."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from monitor.logsetup import configure_logging
from monitor.user_errors import explain


class GuardedGroup(click.Group):
    """Every command's failure as one line and a documented exit code (`user_errors`), never a traceback;
    `-v` logs the traceback as well."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `perfguard history m | head`: the reader left, nothing to report
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            ctx.exit(0)
        except Exception as exc:
            problem = explain(exc)
            if ctx.params.get("verbose"):
                logging.getLogger(__name__).error("the error below in full", exc_info=True)
            click.echo(f"error: {problem.message}", err=True)
            ctx.exit(problem.code)


@click.group(cls=GuardedGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log more detail on stderr.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text or as one JSON object per line (for log shippers).",
)
@click.version_option(package_name="perfguard")
def main(verbose: bool, log_format: str) -> None:
    """perfguard: keep deployed PyTorch models fast."""
    configure_logging(logging.INFO if verbose else logging.WARNING, log_format)
