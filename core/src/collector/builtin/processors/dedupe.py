"""The ``dedupe`` processor: drop events whose key was already seen within a window.

Keys live in a :class:`~collector.state.StateStore` under the processor's
storage directory, so they survive restarts and are shared by every process
that uses the same directory.

When a key is recorded matters.  Recording it while the batch is being
processed would be wrong: if anything after this processor refuses the call
(a later processor, validation, a full queue) the client retries, and the
retry would be dropped as a "duplicate" of data that was never committed.
So the processor only *checks* keys in :meth:`DedupeProcessor.process_batch`
and records them in an outcome hook (``Batch.on_outcome``) that the pipeline
awaits after every queue committed the batch and before the receiver
acknowledges.  A failed call records nothing.

Between the check and the commit a key is *pending* in this process: a
concurrent call carrying the same key (a client retrying while its first
attempt is still committing) waits for the first call's outcome and then
checks again, so it is dropped if the first call committed and passed on if
it failed.  Across processes that share a directory the window between check
and record is not closed; the duplicate then goes out with the same
``source`` and ``id`` when the key is the default, and OpenMeter drops it.

If recording fails after the commit (e.g. the disk filled up in between) the
error is logged and the call still succeeds: the data is committed, and the
worst outcome is that a later duplicate passes this processor.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from collector.builtin.processors.common import Failures, ProcessorConfig, RecordProcessor
from collector.components import Batch, Meta
from collector.durations import Duration
from collector.events import stable_id
from collector.mapping import CompiledMapping, FunctionMap, compile_expression
from collector.state import StateStore, evictions_counter

NAMESPACE = "keys"
STATE_FILE = "dedupe.sqlite"
PURGE_LIMIT = 1000  # expired keys deleted per committed batch at most (bounded work)
PENDING_WAIT = 60.0  # seconds a call waits for another in-flight call holding the same keys


class DedupeConfig(ProcessorConfig):
    """Drop events whose key was already seen (and committed) within `window`; count them as `duplicate`."""

    key: str | None = Field(
        None,
        description="A mapping expression giving an event's key (any JSON value). Default: `source` and `id`, "
        "the key OpenMeter deduplicates on. An event whose key is None is passed on unchecked.",
    )
    window: Duration = Field(
        24 * 3600.0,
        gt=0,
        description="How long a key is remembered after its event was committed: a duration (24h, 90m) or seconds.",
    )
    max_keys: int = Field(
        1_000_000,
        gt=0,
        description="Most keys kept. When full, the keys closest to expiry are evicted first "
        "(counted in collector_state_evicted_keys_total); an evicted key's duplicate is no longer caught.",
    )

    def check_with_functions(self, functions: FunctionMap) -> None:
        if self.key is not None:
            compile_expression(self.key, functions, path="key")


class DedupeProcessor(RecordProcessor):
    def __init__(self, ctx: Any, config: DedupeConfig) -> None:
        super().__init__(ctx, config)
        self.window = float(config.window)
        self.key_mapping: CompiledMapping | None = None
        if config.key is not None:
            self.key_mapping = compile_expression(config.key, ctx.functions, path=f"processors.{ctx.id}.key")
        self.store: StateStore | None = None
        # key -> the outcome of the in-flight call that holds it (this process only; see the module doc)
        self._pending: dict[str, asyncio.Future[None]] = {}

    async def _start(self) -> None:
        path = self.ctx.storage_dir / STATE_FILE
        self.store = await asyncio.to_thread(StateStore, path, max_keys=self.config.max_keys, on_full="evict")

    async def _shutdown(self) -> None:
        await super()._shutdown()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
            self.store = None

    def health(self) -> dict[str, Any]:
        out = super().health()
        if self.store is not None:
            out["evicted_keys"] = self.store.evicted
        return out

    # -- keys ----------------------------------------------------------------------

    def _key(self, record: Any, meta: Meta) -> str | None:
        if self.key_mapping is None:
            if not isinstance(record, dict):
                return None
            value: Any = [record.get("source"), record.get("id")]
            if value[1] is None:
                return None
        else:
            value = self.key_mapping.function(record, meta)
            if value is None:
                return None
        # A fixed-size digest keeps the index small whatever the key looks like.
        return stable_id("dedupe", value)

    # -- processing ----------------------------------------------------------------

    async def process_batch(self, batch: Batch, meta: Meta) -> Batch:
        store = self.store
        if store is None:
            raise RuntimeError(f"processor {self.id} is not started")
        keys: list[str | None] = []
        failures = Failures()
        failed: set[int] = set()
        for i, record in enumerate(batch.events):
            try:
                keys.append(self._key(record, meta))
            except Exception as exc:  # the expression's own error, or a key orjson cannot serialise
                keys.append(None)
                failed.add(i)
                snippet = f" (key: {self.key_mapping.snippet()})" if self.key_mapping else ""
                failures.add(
                    i, record, f"dedupe {self.id}: cannot compute the key: {type(exc).__name__}: {exc}{snippet}"
                )
        await self.settle(failures)

        unique = list(dict.fromkeys(k for k in keys if k is not None))
        # Wait for in-flight calls holding any of our keys, then claim them all at once
        # (no await between the check and the claim, so two calls never both claim a key).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PENDING_WAIT
        while True:
            waits = {id(f): f for k in unique if (f := self._pending.get(k)) is not None}
            if not waits:
                break
            left = deadline - loop.time()
            if left <= 0:
                # A call that never settled (a bug elsewhere) must not block these keys forever;
                # the worst outcome of going on is one duplicate.
                self.log.warning(
                    "dedupe %s: keys in flight for over %.0fs; checking them anyway", self.id, PENDING_WAIT
                )
                break
            await asyncio.wait(list(waits.values()), timeout=left)
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for k in unique:
            self._pending[k] = outcome

        def release(only: list[str] | None = None) -> None:
            for k in unique if only is None else only:
                if self._pending.get(k) is outcome:
                    del self._pending[k]
            if only is None and not outcome.done():
                outcome.set_result(None)

        try:
            now = self.ctx.clock.time()
            seen = set(await asyncio.to_thread(store.get_many, NAMESPACE, unique, now=now)) if unique else set()
        except BaseException:
            release()
            raise
        release([k for k in unique if k in seen])  # nothing to record for these

        out: list[dict[str, Any]] = []
        origins: list[int | None] = []
        kept: set[str] = set()
        for i, (record, key) in enumerate(zip(batch.events, keys, strict=True)):
            if i in failed:
                continue
            if key is not None:
                if key in seen or key in kept:
                    continue
                kept.add(key)
            out.append(record)
            origins.append(batch.origins[i])
        self.count_dropped(len(batch.events) - len(out) - len(failed), "duplicate")

        to_record = [k for k in unique if k in kept]

        async def on_outcome(committed: bool) -> None:
            try:
                if committed and to_record:
                    await self._record(to_record)
            finally:
                release()

        result = Batch(out, origins)
        result.on_outcome.append(on_outcome)
        return result

    async def _record(self, keys: list[str]) -> None:
        store = self.store
        if store is None:
            return
        now = self.ctx.clock.time()
        expires = now + self.window

        def write() -> int:
            with store.transaction() as tx:
                evicted = tx.put_many(NAMESPACE, [(k, b"", expires) for k in keys], now=now)
                tx.purge_expired(now, limit=max(PURGE_LIMIT, 2 * len(keys)))
            return evicted

        try:
            evicted = await asyncio.to_thread(write)
        except Exception:
            # Committed already: failing the call would only make the client send it again.
            self.log.exception("dedupe %s: could not record %d key(s); their duplicates may pass", self.id, len(keys))
            return
        if evicted:
            evictions_counter(self.ctx.metrics).labels(component=self.id).inc(evicted)
            self.log.warning(
                "dedupe %s: the key store is full (%d keys); evicted %d key(s) closest to expiry",
                self.id, self.config.max_keys, evicted,
            )  # fmt: skip
