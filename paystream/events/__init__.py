"""Kafka topics, message schemas and client construction."""

from .kafka import make_consumer, make_producer, start_with_retry
from .messages import PaymentRequested, PaymentStatusEvent, UndecodableMessage

__all__ = [
    "PaymentRequested",
    "PaymentStatusEvent",
    "UndecodableMessage",
    "make_consumer",
    "make_producer",
    "start_with_retry",
]
