"""The writer's tests of tests/ledger/test_writer.py, again on the cluster (see conftest.py): the
campaigns' streams land on different masters, fs:dead and the writers' keys in slots of their own.

Left out: the single-node-only ones (the lean wire, a Redis killed under the writer, lost group
counters after an AOF reload) and the one counting re-commits of a 50 ms claim (a count that
depends on how fast each call is, not on what reaches the ledger: that is asserted by the rest).
"""

from __future__ import annotations

from tests.ledger import test_writer as single

ON_CLUSTER = (
    "test_every_transition_once_and_every_confirm_one_order",
    "test_redelivery_of_everything_writes_nothing_twice",
    "test_entries_that_are_not_events_are_dead_lettered_at_once",
    "test_a_row_the_database_refuses_is_retried_then_dead_lettered",
    "test_several_writers_at_once_while_selling",
    "test_a_campaign_created_after_start_is_followed",
    "test_trimming_keeps_what_another_group_has_not_acknowledged",
    "test_persisted_orders_never_moves_backwards",
    "test_a_stream_lost_under_a_running_writer_is_followed_again",
    "test_the_dead_letter_stream_keeps_its_newest_entries_and_counts_the_rest",
    "test_touch_refreshes_every_entry_still_its_own_and_none_another_writer_claimed",
)
globals().update({name: getattr(single, name) for name in ON_CLUSTER})
