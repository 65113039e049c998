"""The `p2pfl` command.

Higher layers add their subcommand groups through the `p2pfl.commands` entry-point group (the
emulator adds `sim`), so this package never imports them.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

import click


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Peer-to-peer decentralized learning."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _entry in entry_points(group="p2pfl.commands"):
    main.add_command(_entry.load(), name=_entry.name)
