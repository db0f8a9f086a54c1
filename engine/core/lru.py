"""A small least-recently-used map: the Engine's per-campaign caches, bounded."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """At most ``size`` entries; a ``get`` hit or a ``put`` makes an entry the most recent, and a
    ``put`` beyond ``size`` drops the least recent."""

    __slots__ = ("_data", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"an Lru holds at least 1 entry, not {size}")
        self.size = size
        self._data: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        data = self._data
        data[key] = value
        data.move_to_end(key)
        if len(data) > self.size:
            data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)
