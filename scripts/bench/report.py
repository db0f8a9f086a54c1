"""BENCHMARKS.md: each benchmark owns one section, between markers, rewritten on every run."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"
HEADER = """# flashsale benchmarks

Written by `make bench` (`python -m scripts.bench.all`); each section by its own script under
`scripts/bench/`, with the command that reproduces it. Every comparison is measured side by side
in one run on one machine: this host's speed drifts up to 2x within minutes, so quote the ratios.
"""


def machine() -> str:
    """One line naming the machine: CPU model, cores, memory, OS, Python."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    redis_ver = next((w[2:] for w in redis_v if w.startswith("v=")), "?")
    return (f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, {platform.platform(terse=True)}, "
            f"Python {platform.python_version()}, Redis {redis_ver}")


def write_section(name: str, title: str, command: str, body: str) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"{start}\n## {title}\n\n`{command}` — {stamp}  \nMachine: {machine()}\n\n"
               f"{body.strip()}\n{end}")
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text)
