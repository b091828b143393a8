"""Optimisation actions: `optimize`, `rollback`, `actions`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from monitor.cli.app import main
from monitor.cli.common import config_option, json_option, known_model, load, open_db, open_stored, print_json
from monitor.cli.progress import PhaseProgress
from monitor.cli.tables import action_report, format_table, recipe_rows, recipes_table, step_verdicts_table
from monitor.config import LoadedConfig
from monitor.core.actions import ActionRecord
from monitor.harness.worker_pool import WorkerPool
from monitor.optimize.train_amp import TrainCompareError, compare_training, record_advice
from monitor.user_errors import EXIT_FAILED
from storage import queries


@main.command()
@config_option
@json_option
@click.argument("model", required=False)
@click.option("--recipe", "recipes", multiple=True, help="Try this recipe (repeatable); default: the suitable ones.")
@click.option("--action", type=click.Choice(["requantize", "prune", "distill"]), default=None,
              help="Which kind of recipes to try when none is named (default: requantize).")
@click.option("--dry-run/--promote", "dry_run", default=None,
              help="Decide and record without promoting (default: optimize.dry_run).")
@click.option("--list", "list_recipes", is_flag=True, help="List the recipes and exit.")
@click.option("--train", "training", is_flag=True,
              help="Compare the model's training step with autocast instead (advice, stored as an amp "
                   "action; nothing is promoted).")
@click.option("--amp", "amps", multiple=True, type=click.Choice(["bf16", "fp16"]),
              help="With --train: time this autocast mode (repeatable); default: those the device suits.")
def optimize(config_path: Path, as_json: bool, model: str | None, recipes: tuple[str, ...], action: str | None,
             dry_run: bool | None, list_recipes: bool, training: bool, amps: tuple[str, ...]) -> None:
    """Try to make MODEL faster now: build candidates, time them against the current variant, keep the best.

    A candidate is kept only if it is faster by optimize.min_speedup, as accurate (within the
    tolerance) and no bigger; the decision and every candidate's numbers are stored either way.
    With --train, the training step is compared with autocast instead.
    """
    from monitor.core import catalog
    from monitor.optimize.action import OptimizeError, OptimizeRequest
    from monitor.optimize.action import optimize as run_optimize

    if list_recipes:
        if as_json:
            print_json(recipe_rows())
        else:
            click.echo(recipes_table(recipe_rows()))
        return
    if model is None:
        raise click.UsageError("missing argument 'MODEL' (or --list to see the recipes)")
    loaded = load(config_path)
    if model not in {m.name for m in loaded.config.models}:
        raise click.UsageError(
            f"unknown model {model!r}; configured: {', '.join(m.name for m in loaded.config.models) or '(none)'}"
        )
    if training:
        _compare_training(loaded, model, list(amps), as_json)
        return
    for name in recipes:
        if name not in catalog.RECIPES:
            raise click.UsageError(f"unknown recipe {name!r}; known: {', '.join(catalog.RECIPES)}")
    kind = action if action or recipes else "requantize"
    request = OptimizeRequest(model=model, action=kind, recipes=recipes, dry_run=dry_run)  # type: ignore[arg-type]
    with open_db(loaded) as db, WorkerPool() as pool:
        try:
            record = run_optimize(db, loaded, request, pool=pool, progress=PhaseProgress(f"optimize {model}"))
        except OptimizeError as exc:
            raise click.UsageError(str(exc)) from None
    if as_json:
        print_json(record.to_json())
    else:
        click.echo(action_report(record))
    if record.status == "failed":
        sys.exit(EXIT_FAILED)


@main.command()
@config_option
@json_option
@click.argument("model")
def rollback(config_path: Path, as_json: bool, model: str) -> None:
    """Make MODEL's previous variant active again (the one the current variant was derived from)."""
    from monitor.optimize.rollback import roll_back
    from storage.actions import NothingToRollBack

    loaded = load(config_path)
    database = open_stored(loaded)
    if database is None:  # nothing stored yet: nothing was ever promoted
        known_model(loaded, model, None)
        raise click.UsageError(f"{model}: nothing to roll back: it has never been benchmarked or optimised")
    with database as db:
        known = {m.name for m in queries.list_models(db)}
        if model not in known:
            configured = {m.name for m in loaded.config.models}
            if model in configured:
                raise click.UsageError(f"{model}: nothing to roll back: it has never been benchmarked or optimised")
            raise click.UsageError(
                f"unknown model {model!r}; known: {', '.join(sorted(known | configured)) or '(none)'}"
            )
        try:
            record = roll_back(db, loaded, model)
        except NothingToRollBack as exc:
            raise click.UsageError(str(exc)) from None
    if as_json:
        print_json(record.to_json())
    else:
        click.echo(f"{model}: {record.reason} (action {record.id})")


@main.command()
@config_option
@json_option
@click.argument("model", required=False)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
def actions(config_path: Path, as_json: bool, model: str | None, limit: int) -> None:
    """Optimisation decisions and rollbacks, newest first (all models, or MODEL)."""
    from storage.actions import actions as stored_actions

    loaded = load(config_path)
    records: list[ActionRecord] = []
    database = open_stored(loaded)
    if database is None and model is not None:
        known_model(loaded, model, None)
    if database is not None:
        with database as db:
            if model is not None:
                known_model(loaded, model, db)
            records = stored_actions(db, model, limit)
    if as_json:
        print_json([r.to_json() for r in records])
        return
    click.echo(
        format_table(
            ["id", "created (UTC)", "model", "kind", "trigger", "status", "from", "to", "reason"],
            [
                [
                    r.id,
                    r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else "-",
                    r.model,
                    r.kind,
                    r.trigger,
                    r.status + (" (rolled back)" if r.rolled_back_at else ""),
                    r.from_variant,
                    r.to_variant or "-",
                    r.reason[:100],
                ]
                for r in records
            ],
        )
    )


def _compare_training(loaded: LoadedConfig, model: str, amps: list[str], as_json: bool) -> None:
    """`optimize --train`: the training step against its autocast candidates, stored as an action of
    kind "amp" (advice), printed as a table or as the action's JSON."""
    with WorkerPool() as pool:
        try:
            verdicts = compare_training(loaded, model, amps or None, pool=pool)  # type: ignore[arg-type]
        except TrainCompareError as exc:
            raise click.UsageError(str(exc)) from None
    with open_db(loaded) as db:
        record = record_advice(db, loaded, model, verdicts)
    if as_json:
        print_json(record.to_json())
        return
    if verdicts:
        click.echo(step_verdicts_table(verdicts) + "\n")
    click.echo(f"action {record.id}: {record.status}: {record.reason}")
