"""engine.ops.series and engine.ops.mpvalues against prometheus-client's own Counter, Histogram and
multiprocess values: the same observations must give the same exposition, in one process and
summed from the workers' files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values

from engine import fastpath
from engine.ops.series import CounterFamily, Families, HistogramFamily
from tests.ops.promtext import Samples

BUCKETS = (0.001, 0.005, 0.01, 0.1, 1.0)
ROOT = Path(__file__).parents[2]
# mpvalues is used only on the prometheus-client releases it was tested with (engine.fastpath)
lean_values = pytest.mark.skipif(not fastpath.metric_values({}).on, reason=fastpath.metric_values({}).why)


def _without_created(text: str) -> dict[object, float]:
    return {k: v for k, v in Samples(text).values.items() if not k[0].endswith("_created")}


amounts = st.lists(st.one_of(st.sampled_from([0.0, *BUCKETS, 1e9]), st.floats(0, 2, allow_nan=False)),
                   max_size=40)


@settings(max_examples=60, deadline=None)
@given(observations=st.lists(st.tuples(st.sampled_from(["a", "b"]), amounts), max_size=4))
def test_one_process_exposition_equals_prometheus_clients(observations: list[tuple[str, list[float]]]) -> None:
    ref, ours = CollectorRegistry(), CollectorRegistry()
    ref_c = Counter("t_things", "things", ["kind"], registry=ref)
    ref_h = Histogram("t_seconds", "seconds", ["kind"], buckets=BUCKETS, registry=ref)
    c = CounterFamily("t_things", "things", ["kind"], values.MutexValue)  # type: ignore[attr-defined]
    h = HistogramFamily("t_seconds", "seconds", ["kind"], BUCKETS, values.MutexValue)  # type: ignore[attr-defined]
    ours.register(Families(c, h))  # type: ignore[arg-type]
    for kind, xs in observations:
        for x in xs:
            ref_c.labels(kind).inc(x)
            ref_h.labels(kind).observe(x)
            c.child(kind).inc(x)
            h.child(kind).observe(x)
    assert _without_created(generate_latest(ours).decode()) == _without_created(generate_latest(ref).decode())


WORKERS = textwrap.dedent("""
    import os, sys
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
    from prometheus_client.multiprocess import MultiProcessCollector
    from engine.ops.mpvalues import MmapValue
    from engine.ops.series import CounterFamily, HistogramFamily

    ref_dir, our_dir = sys.argv[1], sys.argv[2]
    BUCKETS = (0.001, 0.005, 0.01, 0.1, 1.0)
    AMOUNTS = [0.0, 0.0005, 0.001, 0.003, 0.005, 0.0100001, 0.5, 1.0, 7.0, 1e9]
    SERIES = 1500  # enough keys to grow a value file past its first 64 KiB

    def observe(counter, histogram, child):
        for i in range(SERIES):
            counter(f"k{i}").inc(i % 7 + 1)
        for x in AMOUNTS:
            histogram("a").observe(x)
        pid = os.fork()  # a worker forked after values exist: it counts from zero in files of its own
        if pid == 0:
            counter("k1").inc(100)
            histogram("b").observe(0.002)
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        counter("k2").inc(5)  # the parent's values go on from where they were

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = ref_dir
    values.ValueClass = values.get_value_class()
    c = Counter("t_things", "things", ["kind"], registry=None)
    h = Histogram("t_seconds", "seconds", ["kind"], buckets=BUCKETS, registry=None)
    observe(c.labels, h.labels, None)

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = our_dir
    c2 = CounterFamily("t_things", "things", ["kind"], MmapValue)
    h2 = HistogramFamily("t_seconds", "seconds", ["kind"], BUCKETS, MmapValue)
    observe(c2.child, h2.child, None)

    for d in (ref_dir, our_dir):
        registry = CollectorRegistry()
        MultiProcessCollector(registry, d)
        sys.stdout.write(generate_latest(registry).decode())
        sys.stdout.write("# ---\\n")
""")


@lean_values
def test_worker_files_sum_as_prometheus_clients_own(tmp_path: Path) -> None:
    ref_dir, our_dir = tmp_path / "ref", tmp_path / "ours"
    ref_dir.mkdir()
    our_dir.mkdir()
    out = subprocess.run([sys.executable, "-c", WORKERS, str(ref_dir), str(our_dir)], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    ref_text, our_text, _ = out.stdout.split("# ---\n")
    ref, ours = Samples(ref_text), Samples(our_text)
    assert ours.values == ref.values
    assert ours.get("t_things_total", kind="k1") == 2 + 100  # the forked worker's counts are summed in
    assert ours.get("t_things_total", kind="k2") == 3 + 5
    assert ours.get("t_seconds_count", kind="a") == 10
    assert ours.get("t_seconds_bucket", kind="a", le="0.005") == 5
    assert ours.get("t_seconds_bucket", kind="b", le="0.005") == 1
    assert len([f for f in our_dir.iterdir() if f.name.startswith("counter_")]) == 2  # parent, child
    assert max(f.stat().st_size for f in our_dir.iterdir()) >= 1 << 17  # grew past its first 64 KiB


@lean_values
def test_a_value_file_opened_again_finds_its_values(tmp_path: Path) -> None:
    """A process's file opened a second time (its value class switched mid-run) keeps every value
    at the place it had, and new keys go after them."""
    from engine.ops.mpvalues import ValueFile

    path = str(tmp_path / "counter_1.db")
    first = ValueFile(path)
    slots = {f"k{i}": first.slot(f"k{i}") for i in range(3000)}  # past the first 64 KiB
    for i, index in enumerate(slots.values()):
        first.doubles[index] = float(i)
    first.close()
    again = ValueFile(path)
    assert {key: again.slot(key) for key in slots} == slots
    assert [again.doubles[i] for i in slots.values()] == [float(i) for i in range(3000)]
    assert again.slot("new") > max(slots.values())
    again.close()
