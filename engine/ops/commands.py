"""The `flashsale` subcommands of engine.ops (click commands, imported by engine.cli)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
