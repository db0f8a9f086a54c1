"""prometheus-client's multiprocess values, made cheap to write: the same files, the same format.

With several workers each process writes its metric values to files in
``PROMETHEUS_MULTIPROC_DIR`` and a scrape of any worker sums them (``MultiProcessCollector``).
prometheus-client's own value class takes a lock, asks the kernel for the pid (a system call, to
notice a fork), looks its key up in a dict and packs two doubles into the file on every
increment (what that costs, and what this module saves: BENCHMARKS.md, "Design measurements").

``MmapValue`` keeps the file and its format (``prometheus_client.mmap_dict``: a used-bytes
header, then entries of a length, a JSON key padded to 8 bytes, a value and a timestamp as
doubles) but holds the value's place as an index into a ``memoryview`` of doubles over the
mapped file: an increment is a float addition and one aligned 8-byte store, which a scrape
reading the file concurrently sees whole. The pid is read once, and again in a forked child
(``os.register_at_fork``), which starts from zero in files of its own as prometheus-client's
values do.

The file format and ``_read_all_values`` are prometheus-client's internals: ``engine.ops.metrics``
uses this class only on a release ``engine.fastpath`` lists as tested (and not with
``FLASHSALE_FAST_PATH=0``), else prometheus-client's own multiprocess values.

Values are written by the thread that serves requests (the event loop), as prometheus-client
presumes in multiprocess mode; scrapes read the files, never these objects.
"""

from __future__ import annotations

import mmap
import os
import struct
import weakref
from typing import Any

from prometheus_client.mmap_dict import _read_all_values, mmap_key

INITIAL_BYTES = 1 << 16  # prometheus-client's initial file size
_HEADER = struct.Struct("i")  # bytes used, including this 8-byte header
_ENTRY_LEN = struct.Struct("i")


class ValueFile:
    """One process's file for one kind of metric, in ``MmapedDict``'s format, written in place."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a+b")  # noqa: SIM115 - open for the life of the process
        capacity = os.fstat(self._file.fileno()).st_size
        if capacity == 0:
            self._file.truncate(INITIAL_BYTES)
            capacity = INITIAL_BYTES
        self._mm = mmap.mmap(self._file.fileno(), capacity, access=mmap.ACCESS_WRITE)
        self.doubles = memoryview(self._mm).cast("d")  # type: ignore[arg-type]
        self._slots: dict[str, int] = {}
        used: int = _HEADER.unpack_from(self._mm, 0)[0]
        if used == 0:
            used = 8
            _HEADER.pack_into(self._mm, 0, used)
        else:  # this process's file from before (a value class switched mid-run): keep its values
            for key, _, _, pos in _read_all_values(self._mm, used):  # type: ignore[no-untyped-call]
                self._slots[key] = pos // 8
        self._used = used

    def slot(self, key: str) -> int:
        """The index in ``doubles`` of the key's value (its timestamp is the next one)."""
        index = self._slots.get(key)
        if index is None:
            index = self._slots[key] = self._append(key)
        return index

    def _append(self, key: str) -> int:
        encoded = key.encode()
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        entry = _ENTRY_LEN.pack(len(encoded)) + padded + bytes(16)  # value and timestamp 0.0
        end = self._used + len(entry)
        if end > len(self._mm):
            capacity = len(self._mm)
            while end > capacity:
                capacity *= 2
            self.doubles.release()  # a mapping with a view on it cannot be resized
            self._mm.resize(capacity)  # the file grows with it
            self.doubles = memoryview(self._mm).cast("d")  # type: ignore[arg-type]
        self._mm[self._used:end] = entry
        self._used = end
        _HEADER.pack_into(self._mm, 0, end)  # readers see the entry only once it is whole
        return (end - 16) // 8

    def close(self) -> None:
        self.doubles.release()
        self._mm.close()
        self._file.close()


class _Process:
    """This process's files, by kind; forgotten in a forked child, which makes its own."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.files: dict[str, ValueFile] = {}
        self.values: weakref.WeakSet[MmapValue] = weakref.WeakSet()

    def file(self, prefix: str) -> ValueFile:
        f = self.files.get(prefix)
        if f is None:
            directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
            f = self.files[prefix] = ValueFile(os.path.join(directory, f"{prefix}_{self.pid}.db"))
        return f

    def forked(self) -> None:
        inherited = list(self.values)
        for f in self.files.values():
            f.close()
        self.pid = os.getpid()
        self.files = {}
        for value in inherited:
            value.attach()


_process = _Process()
os.register_at_fork(after_in_child=_process.forked)


class MmapValue:
    """A drop-in for prometheus-client's ``MmapedValue`` (``values.ValueClass`` in multiprocess mode)."""

    _multiprocess = True
    __slots__ = ("__weakref__", "_file", "_index", "_key", "_prefix", "_value")

    def __init__(self, typ: str, metric_name: str, name: str, labelnames: Any, labelvalues: Any,
                 help_text: str, multiprocess_mode: str = "", **_: Any) -> None:
        self._prefix = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
        self._key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
        self.attach()
        _process.values.add(self)

    def attach(self) -> None:
        """Find (or make) this value's place in this process's file and read it from there."""
        self._file = _process.file(self._prefix)
        self._index = self._file.slot(self._key)
        self._value: float = self._file.doubles[self._index]

    def inc(self, amount: float) -> None:
        self._value += amount
        self._file.doubles[self._index] = self._value

    def set(self, value: float, timestamp: float | None = None) -> None:
        doubles = self._file.doubles
        self._value = value
        doubles[self._index + 1] = timestamp or 0.0
        doubles[self._index] = value

    def get(self) -> float:
        return self._value

    def set_exemplar(self, exemplar: Any) -> None:  # prometheus-client keeps none in multiprocess mode
        return

    def get_exemplar(self) -> None:
        return None
