"""A worker's rollout manager: it routes like any replica, but the control process judges the guardrails.

The worker reads the policy file and the store and routes exactly as a single process does. What its
requests tell the guardrails (answers, errors, latencies, shadow comparisons) goes to the control process,
whose manager judges the traffic of every worker once and writes a rollback to the store, which every
worker obeys at its next poll (``rollout_poll_s``), as replicas do.
"""

from __future__ import annotations

from typing import Any

from service.parallel.channel import ChannelSender
from service.rollout.manager import RolloutManager


class WorkerRolloutManager(RolloutManager):
    """Routing here; readings to the control process (``channel``); no guardrail verdicts of its own."""

    def __init__(self, *args: Any, channel: ChannelSender, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channel = channel

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
