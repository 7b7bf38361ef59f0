"""How far a consumer group is behind on a topic, asked of the broker without joining the group:
the worker's backlog sampler reads its group's lag on ``payments.requested`` (and the dead
letters' re-drive group), the webhook sender's its group's on ``payments.status``."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ..config import KafkaSettings
from .kafka import make_consumer


class GroupLag:
    """Broker clients for lag questions, made on first use (and again after a failed start);
    ``close`` when done."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._clients: tuple[AIOKafkaConsumer, AIOKafkaAdminClient] | None = None

    async def _connect(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._clients is None:
            kafka = self._kafka
            # No group and no subscription: it only asks for offsets, never joins or fetches.
            consumer = make_consumer(kafka, group_id=None)
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers,
                                        request_timeout_ms=max(kafka.request_timeout_ms, 10_000))
            try:
                await consumer.start()
                await admin.start()
            except BaseException:
                await consumer.stop()
                await admin.close()
                raise
            self._clients = (consumer, admin)
        return self._clients

    async def waiting(self, topic: str, group: str) -> dict[int, int]:
        """Messages of ``topic`` after ``group``'s committed offsets, per partition (from the
        start of the topic where the group has committed nothing, as the group would read)."""
        consumer, admin = await self._connect()
        found = consumer.partitions_for_topic(topic)
        if not found:
            await consumer._client.force_metadata_update()  # no public way to refresh
            found = consumer.partitions_for_topic(topic)
        partitions = [TopicPartition(topic, p) for p in sorted(found or ())]
        if not partitions:
            return {}
        end = await consumer.end_offsets(partitions)
        start = await consumer.beginning_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
        waiting = {}
        for tp in partitions:
            done = committed[tp].offset if tp in committed else -1
            waiting[tp.partition] = max(0, end[tp] - (done if done >= 0 else start[tp]))
        return waiting

    async def close(self) -> None:
        if self._clients is not None:
            consumer, admin = self._clients
            self._clients = None
            await consumer.stop()
            await admin.close()


__all__ = ["GroupLag"]
