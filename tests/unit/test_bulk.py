"""Pieces of createPayments that need no servers: counting a batch's inputs in a document,
taking N rate-limit tokens at once in the process's buckets, and the publisher keeping a
submitted group in one produce batch."""

from __future__ import annotations

from graphql import OperationDefinitionNode, parse

from paystream.gateway.bulk import bulk_size
from paystream.gateway.ratelimit import Bucket, LocalBuckets
from paystream.services.publisher import Outgoing, Publisher


def size(query: str, variables: dict[str, object] | None = None) -> int:
    document = parse(query)
    operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    return bulk_size(document, operation, variables or {})


def test_the_inputs_are_counted_from_variables_literals_aliases_and_fragments() -> None:
    assert size("mutation($i: [CreatePaymentInput!]!) { createPayments(inputs: $i) { error "
                "{ code } } }", {"i": [{}, {}, {}]}) == 3
    assert size("mutation { createPayments(inputs: [{a: 1}, {a: 2}]) { error { code } } }") == 2
    # A single object is coerced to a list of one.
    assert size("mutation($i: [CreatePaymentInput!]!) { createPayments(inputs: $i) { "
                "error { code } } }", {"i": {"a": 1}}) == 1
    assert size("mutation($x: [CreatePaymentInput!]!) { a: createPayments(inputs: $x) { "
                "error { code } } ...F } fragment F on Mutation { b: createPayments(inputs: "
                "[{a: 1}]) { error { code } } ... on Mutation { c: createPayments(inputs: $x) "
                "{ error { code } } } }", {"x": [1, 2]}) == 5
    # Other mutations and a missing variable count nothing; cycles end.
    assert size("mutation { createPayment(input: {a: 1}) { id } }") == 0
    assert size("mutation($i: [CreatePaymentInput!]) { createPayments(inputs: $i) { "
                "error { code } } }") == 0
    assert size("mutation { ...F } fragment F on Mutation { ...F createPayments(inputs: "
                "[{a: 1}]) { error { code } } }") == 1


def test_local_buckets_take_n_tokens_or_none() -> None:
    bucket = Bucket("mutation", capacity=10, per_s=1.0)
    local = LocalBuckets()
    assert local.take(bucket, "k", 7) is None
    wait = local.take(bucket, "k", 4)  # 3 left: refused whole, about a second to wait
    assert wait is not None and 0.9 < wait <= 1.0
    assert local.take(bucket, "k", 3) is None  # the 4 were not taken
    local.give_back(bucket, "k", 3)
    assert local.take(bucket, "k", 3) is None


def test_more_tokens_than_the_burst_never_pass_and_wait_for_a_full_bucket() -> None:
    bucket = Bucket("mutation", capacity=10, per_s=2.0)
    local = LocalBuckets()
    full = local.take(bucket, "k", 11)
    assert full is not None and full <= 0.001  # full already: nothing to wait for but split
    assert local.take(bucket, "k", 4) is None
    wait = local.take(bucket, "k", 11)
    assert wait is not None and 1.9 < wait <= 2.0  # 6 left: 2 s until full again
    assert local.take(bucket, "k", 6) is None  # the refused batch took nothing


class Recording(Publisher):
    """A publisher whose produce records its batches instead of calling a broker."""

    def __init__(self, **kwargs: int) -> None:
        # Settings, database and producer are only used by the real _produce.
        super().__init__(None, None, None, **kwargs)  # type: ignore[arg-type]
        self.batches: list[list[bytes]] = []

    async def _produce(self, batch: list[Outgoing]) -> None:
        self.batches.append([m.value for m in batch])
        if len(self.batches) == 2:
            self.stop()


def messages(prefix: str, n: int) -> list[Outgoing]:
    return [Outgoing("t", b"k", f"{prefix}{i}".encode()) for i in range(n)]


async def test_a_group_is_never_split_between_produce_batches() -> None:
    publisher = Recording(max_batch=4)
    publisher.submit(*messages("a", 2))
    publisher.submit(*messages("b", 3))  # does not fit beside a: starts the next batch
    publisher.submit(*messages("c", 1))
    await publisher.run()
    assert publisher.batches == [[b"a0", b"a1"], [b"b0", b"b1", b"b2", b"c0"]]
    assert not publisher.busy


async def test_a_group_larger_than_a_batch_is_one_batch_and_a_full_queue_drops_groups_whole(
        ) -> None:
    from paystream.metrics import REGISTRY

    def counted() -> float:
        return REGISTRY.get_sample_value("paystream_publisher_left_to_relay_total",
                                         {"reason": "queue_full"}) or 0.0

    before = counted()
    publisher = Recording(max_batch=2, max_queued=6)
    publisher.submit(*messages("a", 5))
    publisher.submit(*messages("b", 2))  # 5 + 2 > 6: left to the relay, whole
    publisher.submit(*messages("c", 1))
    assert publisher.dropped == 2
    # Counted where an operator sees it: a bulk load once filled the queue unnoticed.
    assert counted() - before == 2
    await publisher.run()
    assert publisher.batches == [[f"a{i}".encode() for i in range(5)], [b"c0"]]
