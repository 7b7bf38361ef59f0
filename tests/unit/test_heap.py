"""The collector's settings of a served process (``paystream.heap``): the API's factory
freezes what it built and raises the young threshold, and cyclic garbage made afterwards is
still collected. In a subprocess, so this test process keeps its own collector."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from paystream import heap

_PROBE = """
import gc, json, weakref
from paystream.gateway.asgi import app
app()
class Node:
    pass
a, b = Node(), Node()
a.peer, b.peer = b, a  # a cycle: reference counts alone never free it
gone = weakref.ref(a)
del a, b
junk = [[i] for i in range(2 * %d)]  # enough container allocations for a young collection
print(json.dumps({"frozen": gc.get_freeze_count(), "threshold": gc.get_threshold(),
                  "cycle_collected": gone() is None}))
"""


def test_the_api_factory_freezes_its_heap_and_still_collects_cycles() -> None:
    # Settings that point nowhere: the factory builds the app without connecting.
    env = {**os.environ, "PAYSTREAM_DB__PRIMARY_URL": "postgresql+asyncpg://nowhere/x",
           "PAYSTREAM_REDIS__URL": "redis://nowhere:1/0",
           "PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS": "nowhere:1"}
    out = subprocess.run([sys.executable, "-c", _PROBE % heap.YOUNG_THRESHOLD], env=env,
                         capture_output=True, text=True, check=True, timeout=120)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    # The schema, settings and services built by the factory: well past a bare interpreter's.
    assert found["frozen"] > 50_000
    assert tuple(found["threshold"]) == (heap.YOUNG_THRESHOLD, *heap.OLDER_THRESHOLDS)
    assert found["cycle_collected"]
