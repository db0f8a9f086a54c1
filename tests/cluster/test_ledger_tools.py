"""recover, archive, reconcile and the ledger's commands (run as processes, ``flashsale …`` with
FLASHSALE_REDIS_URL naming one node) from tests/ledger, again on the cluster (see conftest.py)."""

from __future__ import annotations

from tests.ledger import test_archive, test_commands, test_recover

ON_CLUSTER = {
    test_recover: (
        "test_redis_flushed_mid_sale_then_recovered",
        "test_redis_kept_the_definition_and_the_stream_but_lost_the_counters",
        "test_recover_command",
        "test_recover_refuses_a_campaign_nobody_knows",
        "test_idempotency_keys_survive_a_flush_and_recover",
    ),
    test_archive: (
        "test_an_open_campaign_is_refused",
        "test_a_closed_campaign_with_a_hold_is_refused",
        "test_a_closed_campaign_the_ledger_lacks_orders_of_is_refused",
        "test_a_closed_campaign_redis_and_the_ledger_disagree_on_is_refused",
        "test_a_persisted_campaign_leaves_redis_and_its_ledger_stays",
        "test_a_running_writer_lets_an_archived_campaign_go",
    ),
    test_commands: (
        "test_sigterm_finishes_the_batch_in_flight_and_exits_0",
        "test_burst_drains_everything_then_exits_0",
        "test_reconcile_exits_1_on_any_difference",
        "test_export_holders",
        "test_reconcile_counts_each_storefronts_units",
        "test_reconcile_lists_orders_rows_that_disagree_with_the_confirmed_events",
    ),
}
globals().update({name: getattr(module, name) for module, names in ON_CLUSTER.items() for name in names})
