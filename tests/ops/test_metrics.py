"""The /metrics body, rendered in this process: Redis figures after a sale, hooks, script timing, workers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine import fastpath, keys
from engine.core import Engine
from engine.ledger.streams import GROUP
from engine.ops import metrics
from engine.ops.instrument import instrument
from engine.ops.stats import REJECTION_CODES
from engine.settings import Settings
from tests.ops.conftest import publish_persisted
from tests.ops.promtext import Samples
from tests.ops.sale import EXPECTED, EngineDriver, definition, run_sale
from tests.support.servers import free_port


async def scrape(engine: Engine) -> Samples:
    return Samples((await metrics.render(engine)).decode())


async def test_campaign_figures_equal_the_sale(engine: Engine, sold: str) -> None:
    await publish_persisted(engine.redis, sold, 4)
    m = await scrape(engine)
    c = {"campaign": sold}
    assert m.get("flashsale_redis_up") == 1
    assert m.get("flashsale_campaign_capacity_units", **c) == 60
    assert m.get("flashsale_campaign_sold_units_total", **c) == EXPECTED.sold
    assert m.get("flashsale_campaign_held_units", **c) == EXPECTED.held
    assert m.get("flashsale_campaign_remaining_units", **c) == EXPECTED.remaining
    assert m.get("flashsale_campaign_orders_total", **c) == EXPECTED.orders
    assert m.get("flashsale_campaign_buyers", **c) == EXPECTED.buyers
    assert m.get("flashsale_campaign_sell_through_ratio", **c) == EXPECTED.sold / 60
    assert m.get("flashsale_campaign_take_rate_units_per_second", **c) == EXPECTED.taken / 60
    assert m.get("flashsale_campaign_projected_sellout_timestamp_seconds", **c) > 0
    assert {dict(k)["state"]: v for k, v in m.series("flashsale_campaign_state").items()} == {
        "scheduled": 0, "open": 1, "paused": 0, "closed": 0}
    assert {dict(k)["code"]: v for k, v in m.series("flashsale_campaign_rejections_total").items()} == {
        code: EXPECTED.rejections.get(code, 0) for code in REJECTION_CODES}
    for pid, (sold_, held, remaining, total) in EXPECTED.products.items():
        p = {"campaign": sold, "product": pid}
        assert m.get("flashsale_product_sold_units_total", **p) == sold_
        assert m.get("flashsale_product_held_units", **p) == held
        assert m.get("flashsale_product_remaining_units", **p) == remaining
        assert m.get("flashsale_product_capacity_units", **p) == total
    assert m.get("flashsale_ledger_persisted_orders_total", **c) == 4
    assert m.get("flashsale_ledger_lag_orders", **c) == EXPECTED.orders - 4
    assert m.types["flashsale_campaign_sold_units"] == "counter"
    assert m.types["flashsale_campaign_held_units"] == "gauge"


async def test_writer_backlog_pending_and_dead_letters(engine: Engine, sold: str) -> None:
    """11 reserved + 6 confirmed + 1 cancelled = 18 events; a writer of the group reads 5, acknowledges 3."""
    c = {"campaign": sold}
    stream = keys.CampaignKeys(sold).events

    def backlog(m: Samples) -> tuple[float, float, float]:
        return (m.get("flashsale_writer_stream_entries", **c), m.get("flashsale_writer_undelivered_entries", **c),
                m.get("flashsale_writer_pending_entries", **c))

    m = await scrape(engine)
    assert backlog(m) == (18, 18, 0)  # no writer has joined yet
    assert (m.get("flashsale_writer_dead_letters"), m.get("flashsale_writers_alive")) == (0, 0)
    await engine.redis.xgroup_create(stream, GROUP, id="0")
    read = await engine.redis.xreadgroup(GROUP, "w1", {stream: ">"}, count=5)
    ids = [entry_id for entry_id, _ in read[0][1]]
    await engine.redis.xack(stream, GROUP, *ids[:3])
    await engine.redis.xadd(keys.DEAD_LETTERS, {"stream": stream, "reason": "test"})
    m = await scrape(engine)
    assert backlog(m) == (18, 13, 2)
    assert m.get("flashsale_writer_dead_letters") == 1


async def test_redis_down_is_a_metric_not_an_error() -> None:
    engine = Engine.from_settings(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5))
    try:
        m = await scrape(engine)
    finally:
        await engine.close()
    assert m.get("flashsale_redis_up") == 0
    assert not any(n.startswith(("flashsale_campaign_", "flashsale_product_")) for n in m.names())


async def test_request_and_outcome_hooks(engine: Engine) -> None:
    before = await scrape(engine)
    metrics.observe_request("/v1/campaigns/{cid}/reservations", "POST", 409, 0.003)
    metrics.observe_request("/v1/campaigns/{cid}/reservations", "POST", 409, 0.2)
    metrics.count_outcome("reserve", "SOLD_OUT", 0.002)
    metrics.count_outcome("reserve", "SOLD_OUT")
    after = await scrape(engine)
    r = {"route": "/v1/campaigns/{cid}/reservations", "method": "POST"}

    def delta(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, 0.0, **labels)

    assert delta("flashsale_http_requests_total", status="409", **r) == 2
    assert delta("flashsale_http_request_duration_seconds_count", **r) == 2
    assert delta("flashsale_http_request_duration_seconds_bucket", le="0.005", **r) == 1
    assert delta("flashsale_outcomes_total", operation="reserve", code="SOLD_OUT") == 2
    assert delta("flashsale_engine_call_duration_seconds_count", operation="reserve") == 1


async def test_instrumented_engine_observes_every_script_call(engine: Engine) -> None:
    """Batch sizes sum to the requests made: 17 reserves, 6 confirms, 1 cancel."""
    instrument(engine)
    instrument(engine)  # twice changes nothing
    before = await scrape(engine)
    d = EngineDriver(engine, "timed")
    await d.load(definition("timed"))
    await run_sale(d)
    after = await scrape(engine)
    for script, requests in (("reserve", 17), ("confirm", 6), ("cancel", 1)):
        s = {"script": script}
        calls = after.get("flashsale_script_duration_seconds_count", **s) - before.get(
            "flashsale_script_duration_seconds_count", 0.0, **s)
        carried = after.get("flashsale_script_batch_requests_sum", **s) - before.get(
            "flashsale_script_batch_requests_sum", 0.0, **s)
        assert carried == requests
        assert 1 <= calls <= requests


async def test_expired_holds_are_counted_as_expire_outcomes(engine: Engine) -> None:
    instrument(engine)
    d = EngineDriver(engine, "short")
    await d.load({**definition("short"), "hold_seconds": 1})
    for i in range(3):
        assert (await d.reserve(f"s{i}", "beta", 2, f"k{i}"))[0] == "OK"
    before = (await scrape(engine)).get("flashsale_outcomes_total", 0.0, operation="expire", code="OK")
    expired = 0
    for _ in range(100):  # the holds' deadline is a second away, by Redis's clock
        expired += (await engine.expire_due("short"))[0]
        if expired == 3:
            break
        await asyncio.sleep(0.1)
    after = (await scrape(engine)).get("flashsale_outcomes_total", operation="expire", code="OK")
    assert expired == 3
    assert after - before == 3


FORKED_WORKERS = textwrap.dedent("""
    import os, sys
    import prometheus_client  # imported before prepare_multiprocess, as flashsale's CLI does
    from engine.ops import metrics

    path = metrics.prepare_multiprocess()  # no PROMETHEUS_MULTIPROC_DIR: a fresh directory
    children = []
    for n in (3, 5):  # two forked workers, as granian starts them
        pid = os.fork()
        if pid == 0:
            for _ in range(n):
                metrics.count_outcome("reserve", "OK")
            metrics.observe_request("/x", "GET", 200, 0.01)
            os._exit(0)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    sys.stdout.write(generate_latest(registry).decode())
    print("# files", len([f for f in os.listdir(path) if f.startswith("counter_")]))
""")


def test_forked_workers_are_summed() -> None:
    """prepare_multiprocess() then fork: each worker's counts land in the shared directory."""
    out = subprocess.run([sys.executable, "-c", FORKED_WORKERS], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin"}, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    m = Samples(out.stdout)
    assert m.get("flashsale_outcomes_total", operation="reserve", code="OK") == 8
    assert m.get("flashsale_http_requests_total", route="/x", method="GET", status="200") == 2
    assert out.stdout.rstrip().endswith("# files 2")


# the lean values on a prometheus-client release they were tested with, else prometheus-client's own
LEAN = "MmapValue" if fastpath.metric_values({}).on else "MmapedValue"


@pytest.mark.parametrize(("switch", "value_class"), [("1", LEAN), ("0", "MmapedValue")])
def test_a_spawned_worker_writes_the_shared_files_with_the_lean_values(tmp_path: Path, switch: str,
                                                                        value_class: str) -> None:
    """uvicorn spawns its workers: they import everything afresh with PROMETHEUS_MULTIPROC_DIR set.
    With FLASHSALE_FAST_PATH=0 they write through prometheus-client's own values: the same sums."""
    script = textwrap.dedent("""
        from engine.ops import metrics
        metrics.observe_request("/x", "GET", 200, 0.01)
        print(type(metrics._metrics().requests.child("/x", "GET", "200")).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
                              "FLASHSALE_FAST_PATH": switch},
                         cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == value_class
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(tmp_path))  # type: ignore[no-untyped-call]
    m = Samples(generate_latest(registry).decode())
    assert m.get("flashsale_http_requests_total", route="/x", method="GET", status="200") == 1
    assert m.get("flashsale_http_request_duration_seconds_count", route="/x", method="GET") == 1


@pytest.mark.parametrize("preset", [False, True])
def test_prepare_multiprocess_makes_or_empties_the_directory(tmp_path: Path, preset: bool) -> None:
    script = textwrap.dedent("""
        import os, sys
        from engine.ops import metrics
        path = metrics.prepare_multiprocess()
        print(path, os.environ["PROMETHEUS_MULTIPROC_DIR"] == path, sorted(os.listdir(path)))
    """)
    env = {"PATH": "/usr/bin:/bin"}
    if preset:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "m")
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "counter_999999.db").write_bytes(b"stale")  # an earlier run's: removed, not summed
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env,
                         cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    path, same, listing = out.stdout.split(" ", 2)
    assert same == "True" and listing.strip() == "[]"
    if preset:
        assert path == str(tmp_path / "m")
    else:
        assert not Path(path).exists()  # a directory it made itself is removed at exit
