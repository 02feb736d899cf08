"""A worker's rollout manager: it routes like any replica, but the control process judges the guardrails.

The worker reads the policy file and the store and routes exactly as a single process does. What its
requests tell the guardrails (answers, errors, latencies, shadow comparisons) goes to the control process,
whose manager judges the traffic of every worker once and writes a rollback to the store, which every
worker obeys at its next poll (``rollout_poll_s``), as replicas do.
"""

from __future__ import annotations

from multiprocessing.sharedctypes import Synchronized
from typing import Any

from service.parallel.channel import ChannelSender
from service.rollout.manager import RolloutManager


class WorkerRolloutManager(RolloutManager):
    """Routing here; readings to the control process (``channel``); no guardrail verdicts of its own."""

    def __init__(
        self, *args: Any, channel: ChannelSender, generation: Synchronized[int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.channel = channel
        self.generation = generation  # the group's rollout generation (service.parallel.forward)
        self._generation_seen = generation.value if generation is not None else 0

    async def _read(self) -> None:
        """A decision this worker's poll found first is read by every other worker at its next tick."""
        before = self.decisions
        await super()._read()
        if self.generation is not None and self.decisions != before:
            with self.generation.get_lock():
                self.generation.value += 1
                self._generation_seen = self.generation.value

    async def tick(self) -> None:
        if self.generation is not None and self.generation.value != self._generation_seen:
            self._generation_seen = self.generation.value
            self._sync_soon()
        await super().tick()

    def _watches(self, name: str, version: int) -> bool:
        windows = self._watched.get(name)  # only while a candidate runs, as the manager's own check
        return windows is not None and version in windows

    def observe(self, name: str, version: int, ok: bool, seconds: float, count: int = 1) -> None:
        if self._watches(name, version):
            self.channel.rollout("observe", name, version, ok, seconds, count)

    def shed(self, name: str, candidate: int, count: int = 1) -> None:
        if self._watches(name, candidate):
            self.channel.rollout("shed", name, candidate, count)

    def compared(
        self,
        name: str,
        candidate: int,
        compared: int,
        disagreed: int,
        abs_diff: float = 0.0,
        rel_diff: float = 0.0,
        differences: int = 0,
    ) -> None:
        self.channel.rollout("compared", name, candidate, compared, disagreed, abs_diff, rel_diff, differences)

    async def check_guardrails(self) -> None:
        """Judged once, in the control process."""


class ControlRolloutManager(RolloutManager):
    """The control process's manager: judges every worker's readings; a change it writes (an automatic
    rollback) bumps the group's ``generation``, so every worker reads the store before its next request."""

    def __init__(self, *args: Any, generation: Synchronized[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generation = generation

    async def _write_pending(self, change: Any) -> None:
        await super()._write_pending(change)
        with self.generation.get_lock():
            self.generation.value += 1
