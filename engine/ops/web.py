"""Ops routes mounted by the API app without a token: /metrics, /dashboard (stub: filled in by the ops work)."""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
