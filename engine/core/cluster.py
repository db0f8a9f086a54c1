"""The hot path on a Redis Cluster: one lean ``Wire`` per master, chosen by each call's hash slot.

Every key of a campaign carries its hash tag ``{c:ID}`` (``engine.keys``), so every script call
touches one slot, and ``ClusterWire.evalsha`` sends it to the master that serves that slot. The
slot map comes from ``CLUSTER SLOTS`` (asked of any master known, else of the node the URL named):

- ``MOVED slot host:port``: the slot has a new owner (a reshard, a failover). The call did not run;
  the map learns the owner at once, a full refresh follows in the background, and the call goes to
  the new owner (at most ``REDIRECTS`` hops).
- ``ASK slot host:port``: the slot is migrating and this key is already on the target: ``ASKING``
  and the call go together to the target, the map unchanged.
- ``TRYAGAIN`` (a multi-key call meeting a slot half-migrated), ``CLUSTERDOWN``, a lost or refused
  connection, a timeout: an outage, raised as such (the caller answers 503, never a guess); a
  connection failure also refreshes the map, so that once a replica has taken over, the next call
  finds it.
- ``NOSCRIPT`` (a master promoted after a failover has an empty script cache): ``Wire.evalsha``
  sends the same call as EVAL.

Each master's Wire does the ``WAIT`` of ``--replica-acks`` itself (``engine.core.wire``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from engine.core.wire import Wire, command

log = logging.getLogger("flashsale.cluster")

REDIRECTS = 5  # MOVED / ASK hops one call may follow
REFRESH_GAP_S = 0.1  # at most one slot map refresh this often (a failover makes many calls fail)
_CLUSTER_SLOTS = command("CLUSTER", "SLOTS")

Address = tuple[str, int]


def slot_of_key(key: str | bytes) -> int:
    """The hash slot of a key, as Redis computes it (``CLUSTER KEYSLOT``): CRC16 of its hash tag."""
    return key_slot(key.encode() if isinstance(key, str) else key)


def _first_key(head: list[bytes]) -> bytes:
    """The first key of a RESP-encoded ``sha, numkeys, key, ...`` head."""
    return head[2].split(b"\r\n", 2)[1]


def parse_slots(reply: list[Any]) -> dict[Address, list[tuple[int, int]]]:
    """``CLUSTER SLOTS``'s reply -> each master's address and its slot ranges."""
    owners: dict[Address, list[tuple[int, int]]] = {}
    for entry in reply:
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        owners.setdefault((host, int(master[1])), []).append((start, end))
    return owners


class ClusterWire:
    """``evalsha(script, head, args)`` as ``Wire``'s, routed to the master of the call's slot."""

    def __init__(self, seeds: list[Address], *, username: str | None = None, password: str | None = None,
                 timeout_s: float = 0.5, acks: int = 0, acks_timeout_ms: int = 1000) -> None:
        self.seeds = list(seeds)
        self._wire_kwargs: dict[str, Any] = {"username": username, "password": password, "timeout_s": timeout_s,
                                             "acks": acks, "acks_timeout_ms": acks_timeout_ms}
        self.timeout_s = timeout_s
        self._owner: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._wires: dict[Address, Wire] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._first_map: asyncio.Lock | None = None
        self._refreshed_at = -REFRESH_GAP_S
        self.refreshes = 0  # how many times the map was read (tests and metrics look)

    @classmethod
    def for_cluster(cls, client: RedisCluster, timeout_s: float, *, acks: int = 0,
                    acks_timeout_ms: int = 1000) -> ClusterWire:
        """A ClusterWire to the cluster ``client`` knows (its startup nodes, its credentials)."""
        kw = client.connection_kwargs
        seeds = [(n.host, int(n.port)) for n in client.nodes_manager.startup_nodes.values()]
        return cls(seeds, username=kw.get("username"), password=kw.get("password"), timeout_s=timeout_s,
                   acks=acks, acks_timeout_ms=acks_timeout_ms)

    # -- the slot map -------------------------------------------------------------------------

    def wire(self, address: Address) -> Wire:
        w = self._wires.get(address)
        if w is None:
            w = self._wires[address] = Wire(host=address[0], port=address[1], **self._wire_kwargs)
        return w

    def masters(self) -> list[Address]:
        """The masters the map names now."""
        return sorted({a for a in self._owner if a is not None})

    def owner(self, slot: int) -> Address | None:
        return self._owner[slot]

    async def refresh(self) -> None:
        """Read the slot map from the first node that answers (masters known first, then seeds)."""
        errors: list[str] = []
        for address in [*self.masters(), *(s for s in self.seeds if s not in self.masters())]:
            try:
                reply = await self.wire(address).call(_CLUSTER_SLOTS)
            except (RedisConnectionError, RedisTimeout, OSError) as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            owners = parse_slots(reply)
            table: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
            for master, ranges in owners.items():
                for start, end in ranges:
                    table[start : end + 1] = [master] * (end - start + 1)
            self._owner = table
            self.refreshes += 1
            for gone in set(self._wires) - set(owners):  # a master no longer serving slots
                self._wires.pop(gone).close()
            return
        raise RedisConnectionError("no cluster node answered CLUSTER SLOTS: " + "; ".join(errors))

    def refresh_soon(self) -> None:
        """Refresh in the background (one at a time, at most every ``REFRESH_GAP_S``)."""
        loop = asyncio.get_running_loop()
        if self._refreshing is not None or loop.time() - self._refreshed_at < REFRESH_GAP_S:
            return
        self._refreshed_at = loop.time()

        async def run() -> None:
            try:
                await self.refresh()
            except (RedisConnectionError, RedisTimeout, OSError) as exc:
                log.warning("cannot refresh the cluster slot map: %s", exc)
            finally:
                self._refreshing = None

        self._refreshing = loop.create_task(run())

    # -- calls --------------------------------------------------------------------------------

    async def evalsha(self, script: bytes, head: list[bytes], args: list[bytes]) -> Any:
        slot = slot_of_key(_first_key(head))
        address = self._owner[slot]
        if address is None:
            if self._first_map is None:
                self._first_map = asyncio.Lock()
            async with self._first_map:  # concurrent first calls share one refresh
                if self._owner[slot] is None:
                    await self.refresh()
            address = self._owner[slot]
            if address is None:
                raise ClusterDownError(f"CLUSTERDOWN no master serves hash slot {slot}")
        asking = False
        for _ in range(REDIRECTS):
            try:
                return await self.wire(address).evalsha(script, head, args, asking=asking)
            except MovedError as exc:  # did not run: the slot's new owner takes the same call
                address = self._owner[slot] = (exc.host, exc.port)
                asking = False
                self.refresh_soon()
            except AskError as exc:  # this call only, to the migration's target
                address, asking = (exc.host, exc.port), True
            except (RedisConnectionError, RedisTimeout, OSError):
                self.refresh_soon()  # a failover, most likely: the next call finds the new master
                raise
        raise RedisConnectionError(f"hash slot {slot} redirected more than {REDIRECTS} times")

    def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            self._refreshing = None
        for w in self._wires.values():
            w.close()
        self._wires.clear()

