"""What makes one process of the group a worker or the control process (``service.app.build`` takes one)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from service.parallel.channel import ChannelMetrics, ChannelReceiver, ChannelSender
from service.parallel.group import CONTROL, ProcessGroup, worker_name

if TYPE_CHECKING:
    from service.app import Components


@dataclass
class WorkerRole:
    """Serves the whole API on the shared socket; sends monitoring and guardrail readings to the control process."""

    index: int
    group: ProcessGroup
    channel: Queue[Any]
    sent: Any  # shared array: messages each worker has sent (service.parallel.channel)
    rollout_generation: Synchronized[int]  # bumped when an admin changes a rollout (service.parallel.forward)
    capacity: int = 10_000

    def __post_init__(self) -> None:
        self._sender: ChannelSender | None = None

    def sender(self, registry: CollectorRegistry) -> ChannelSender:
        self._sender = ChannelSender(self.channel, ChannelMetrics(registry), self.index, self.sent, self.capacity)
        return self._sender

    def started(self, components: Components) -> None:
        self.group.started(worker_name(self.index))

    def stopping(self, components: Components) -> None:
        self.group.stopped(worker_name(self.index))

    def stopped(self, components: Components) -> None:
        if self._sender is not None:  # what the drained requests left
            self._sender.close()


@dataclass
class ControlRole:
    """Runs the monitor and the guardrails over every worker's traffic; answers forwarded routes on a unix socket."""

    group: ProcessGroup
    channel: Queue[Any]
    sent: Any
    rollout_generation: Synchronized[int]

    def __post_init__(self) -> None:
        self.receiver = ChannelReceiver(self.channel, self.sent)

    def started(self, c: Components) -> None:
        def version_of(name: str, number: int) -> Any:
            return c.registry.versions_of(name).get(number)

        self.receiver.start(version_of, c.monitor, c.rollout, asyncio.get_running_loop())
        self.group.started(CONTROL)

    def stopping(self, components: Components) -> None:
        self.group.stopped(CONTROL)
        self.receiver.stop()

    def stopped(self, components: Components) -> None:
        pass


ProcessRole = WorkerRole | ControlRole
