"""`diffgame zoo build|list`: the embedded toy organism zoo."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from diffgame.cli import TrackingUri, ZooSize, _fail, zoo_app
from diffgame.errors import DiffgameError


@zoo_app.command("build")
def zoo_build(names: Annotated[Optional[list[str]], typer.Argument(
                  help="Organisms to build (default: all zoo organisms); the base is built first.")] = None,
              size: ZooSize = "small",
              variant: Annotated[Optional[str], typer.Option(
                  "--variant", help="Build this variant of each organism: mix1-XpY (its recipe with the base's "
                                    "documents mixed in at ratio X.Y; mix1-0p0: nothing mixed in) or mixchat1-XpY; "
                                    "default: each organism's default.", show_default=False)] = None,
              tracking_uri: TrackingUri = None) -> None:
    """Train the toy base and organisms offline; each is a `zoo` run, reused when its fingerprint matches.

    Example: diffgame zoo build --size micro caps control; diffgame zoo build --size smol --variant mix1-0p0 caps
    """
    from diffgame import tracking
    from diffgame.pipeline.building import build_zoo
    from diffgame.zoo import EXPERIMENT, print_zoo

    tracking.set_uri(tracking_uri)
    try:
        tracking.check_writable(EXPERIMENT)  # before any training
        entries = build_zoo(size=size, names=list(names or []), variant=variant)
    except DiffgameError as e:
        _fail(e)
    print_zoo(entries)


@zoo_app.command("list")
def zoo_list(size: Annotated[Optional[str], typer.Option("--size", help="Only this size.")] = None,
             tracking_uri: TrackingUri = None) -> None:
    """List built zoo models with their behaviour checks (caps rate, held-out losses, taboo rates)."""
    from diffgame import tracking
    from diffgame.zoo import list_zoo, print_zoo

    tracking.set_uri(tracking_uri)
    try:
        print_zoo(list_zoo(size=size))
    except DiffgameError as e:
        _fail(e)
