"""The `diffgame` command line: one command per stage (zoo, preprocess, diff, run, runs, grades, play, app, config).

This module holds the Typer app, the options the commands share and the entry point; the commands live in
`stages` (the pipeline, runs, grades, play, config), `zoo` and `serve` (the app). Each command imports what it needs
when it runs, so `diffgame --help` and `diffgame config` never load torch, Lightning or MLflow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from diffgame.errors import DiffgameError, Terminated

app = typer.Typer(
    help="diffgame: find out what finetuning changed by diffing a base model and a model organism.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
zoo_app = typer.Typer(help="Build and list the embedded toy organism zoo (trained offline).", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")

Overrides = Annotated[Optional[list[str]], typer.Argument(
    help="Config overrides, Hydra style: `organism=caps method=\\[kl,normdiff] preprocessing.layers=\\[0.5]`.",
    show_default=False)]
TrackingUri = Annotated[Optional[str], typer.Option(
    "--tracking-uri", help="MLflow tracking URI (a remote `http://host:5000` server or `sqlite:///path.db`); "
                           "default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this folder.")]
Multirun = Annotated[bool, typer.Option(
    "--multirun", "-m", help="Expand comma-separated values (`organism=caps,control`) into a sweep: "
                             "one parent run, one child per combination.")]
Rebuild = Annotated[bool, typer.Option(
    "--rebuild", help="Rebuild the activation store even when a finished one matches (the old run is marked "
                      "FAILED); same as preprocessing.rebuild=true.")]
Launcher = Annotated[Optional[str], typer.Option(
    "--launcher", help="Run the sweep's combinations as jobs: `local` (processes on this machine) or `slurm` (an "
                       "array), through submitit; implies --multirun. Same as launcher=<name> (docs/cluster.md).",
    show_default=False)]
Jobs = Annotated[Optional[int], typer.Option(
    "--jobs", "-j", min=1, help="Children running at once with --launcher (launcher.jobs).", show_default=False)]
ZooSize = Annotated[str, typer.Option("--size", help="Zoo size: micro (tests), small (default), smol / smol_gpu (LoRA organisms on SmolLM2-135M; use with model=smollm2_135m).")]


@app.callback()
def main_options(config_dir: Annotated[Optional[list[Path]], typer.Option(
        "--config-dir", help="A folder of your own configs (`organism/my_org.yaml`, `model/...`) searched beside "
                             "the built-in tree, so `organism=my_org` finds it; repeatable. Same as "
                             "DIFFGAME_CONFIG_PATH.", show_default=False)] = None) -> None:
    """diffgame: find out what finetuning changed by diffing a base model and a model organism."""
    from diffgame.config.configtree import add_user_dir

    for folder in reversed(config_dir or []):
        add_user_dir(folder)


def _fail(err: DiffgameError) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


LOG_REPAINT_S = "30"
"""Seconds between progress-bar repaints when stderr is a log file, not a terminal (tqdm's TQDM_MININTERVAL)."""


def main() -> None:
    if not sys.stderr.isatty():  # a log file gets a bar line every half minute, not one per update
        os.environ.setdefault("TQDM_MININTERVAL", LOG_REPAINT_S)
    try:
        app()
    except Terminated:
        typer.secho("terminated (SIGTERM): the open run is marked KILLED; run the same command again to resume",
                    fg=typer.colors.RED, err=True)
        sys.exit(128 + 15)  # what a shell reports for a process ended by SIGTERM


# each registers its commands on `app`, in the order `diffgame --help` lists them
from diffgame.cli import stages  # noqa: E402,F401 # isort: skip
from diffgame.cli import zoo  # noqa: E402,F401 # isort: skip
from diffgame.cli import serve  # noqa: E402,F401 # isort: skip
