"""The durable ledger: the campaign streams written exactly once into PostgreSQL or SQLite.

    writer.py     the consumer-group loop (read ahead, group commit, acknowledgement after commit)
    config.py     its settings and figures, batches, backoff
    streams.py    consumer groups, claiming, dead letters, trimming
    sink.py       the Sink Protocol; postgres.py and sqlite.py implement it; schema.py versions it
    health.py     what writers publish, and ``ledger_status`` for stats, metrics and dashboards
    history.py    a campaign rebuilt from its events; reconcile.py and recover.py use it
    export.py     the holder register
"""

from __future__ import annotations

from engine.ledger.config import WriterSettings
from engine.ledger.factory import sink_for
from engine.ledger.health import CampaignLedger, LedgerStatus, campaign_ledger, ledger_status
from engine.ledger.sink import Holder, LedgerSnapshot, LedgerUnavailable, Order, RowRejected, Sink
from engine.ledger.writer import Writer

__all__ = [
    "CampaignLedger", "Holder", "LedgerSnapshot", "LedgerStatus", "LedgerUnavailable", "Order", "RowRejected",
    "Sink", "Writer", "WriterSettings", "campaign_ledger", "ledger_status", "sink_for",
]
