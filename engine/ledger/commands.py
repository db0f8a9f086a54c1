"""The `flashsale` subcommands of engine.ledger (click commands, imported by engine.cli)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
