"""The fast path: on only with the releases it was tested with, off with one switch.

Two parts of flashsale lean on another package's internals, because that is where the CPU goes:

- **the serving protocol** (``engine.api.transport``, with the reserve lane of ``engine.api.lane``)
  subclasses uvicorn's httptools protocol and uses its private names;
- **the multiprocess metric values** (``engine.ops.mpvalues``) write prometheus-client's value
  files in place, in its undocumented file format, and read them with its private reader.

Internals change without notice between releases, so each part runs only on a release listed
below, the releases the test suite passed on, both ways (``make test`` and ``make test-slowpath``).
On any other release, or with ``FLASHSALE_FAST_PATH=0``, that part steps aside for the documented
path: uvicorn's own httptools protocol serving the Starlette app (every request through ASGI, the
reserve route included, which answers exactly as the lane does), and prometheus-client's own
multiprocess values. Same answers, same metrics; only slower. ``flashsale serve`` says so in one
log line at start (``notice``).

To admit a new release: install it, run ``make test`` and ``make test-slowpath``, then add it here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

SWITCH = "FLASHSALE_FAST_PATH"  # "0" (or off/false/no) turns the whole fast path off
TESTED_UVICORN = frozenset({"0.54.0", "0.55.0"})  # engine.api.transport subclasses its protocol
TESTED_PROMETHEUS = frozenset({"0.26.0"})  # engine.ops.mpvalues writes its value files

_OFF = ("0", "off", "false", "no")


@dataclass(frozen=True, slots=True)
class Part:
    """One part of the fast path: whether it runs here, and if not, why."""

    name: str
    on: bool
    why: str = ""


def switched_off(env: Mapping[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get(SWITCH, "").strip().lower() in _OFF


def installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def decide(name: str, package: str, version: str | None, tested: frozenset[str], off: bool) -> Part:
    """Whether ``name`` (which uses ``package``'s internals) runs with this ``version`` installed."""
    if off:
        return Part(name, False, f"{SWITCH}=0")
    if version not in tested:
        return Part(name, False, f"{package} {version} is not among the tested releases "
                                 f"({', '.join(sorted(tested))})")
    return Part(name, True)


def serving(env: Mapping[str, str] | None = None) -> Part:
    """The reserve lane and one-write responses under uvicorn (``engine.api.transport``)."""
    return decide("the reserve lane", "uvicorn", installed("uvicorn"), TESTED_UVICORN, switched_off(env))


def metric_values(env: Mapping[str, str] | None = None) -> Part:
    """The in-place multiprocess metric values (``engine.ops.mpvalues``)."""
    return decide("the lean metric values", "prometheus-client", installed("prometheus-client"),
                  TESTED_PROMETHEUS, switched_off(env))


def notice(parts: list[Part], log: logging.Logger) -> None:
    """One line at start if any part is off (a warning when a release was not tested)."""
    off = [p for p in parts if not p.on]
    if not off:
        return
    level = logging.INFO if all(p.why.startswith(SWITCH) for p in off) else logging.WARNING
    log.log(level, "fast path off: %s; serving through the documented path",
            "; ".join(f"{p.name}: {p.why}" for p in off))
