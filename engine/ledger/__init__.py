"""flashsale ledger."""
