"""flashsale: a high-concurrency flash-sale subscription engine.

The core (``engine.core``) is a Python API over atomic Lua scripts in Redis; the HTTP API
(``engine.api``), the durable ledger (``engine.ledger``), ops (``engine.ops``) and the load
generator (``engine.loadgen``) all depend on it, never the other way round.
"""

from __future__ import annotations

__version__ = "0.1.0"
