"""Subscription frames written to a socket below Strawberry's handler.

Fanning one status event out to thousands of subscribers through Strawberry costs each of them
a task switch, a pass through every layer of its result stream, a message dict, its JSON and
an ASGI send. The payload is the same for every subscriber of one audience
(``schema/sharing.py``), and only the operation id and the message type differ between their
frames, so a live update is written here instead: the shared payload with the operation's
prefix and a closing brace around it, byte for byte what Strawberry's handler would send.

The frame goes into uvicorn's protocol for the socket (its websockets ``ServerProtocol``, which
applies permessage-deflate with the connection's own context when it is on) and is flushed to
the transport as soon as a frame for another socket is written (the status hub hands an event
to one socket's subscriptions one after another), else at the loop's next turn: one event's
frames for the ten subscriptions of a socket leave in one write, and the first sockets have
theirs while the hub writes the rest. Frames are written only while the transport is below
its high-water mark; past it, the update takes Strawberry's path, whose send waits for the
socket and whose subscriber queue bound cuts a reader that does not keep up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

from starlette.websockets import WebSocket
from websockets.protocol import Protocol, State

from ..schema.sharing import OperationFrames

PROTOCOL = "paystream.ws_protocol"


def protocol_of(send: Any) -> Any | None:
    """uvicorn's sans-I/O websocket protocol behind an ASGI ``send``, when it is one: its
    ``conn`` is the websockets protocol that frames and compresses, ``transport`` the socket."""
    protocol = getattr(send, "__self__", None)
    conn = getattr(protocol, "conn", None)
    transport = getattr(protocol, "transport", None)
    if isinstance(conn, Protocol) and hasattr(transport, "get_write_buffer_limits"):
        return protocol
    return None


class SocketFrames:
    """The frames of one websocket's subscriptions, written without Strawberry."""

    __slots__ = ("_conn", "_flush_scheduled", "_high_water", "_transport")
    # The socket written to last (in this process): flushed when another one is written to.
    _writing: ClassVar[SocketFrames | None] = None

    def __init__(self, protocol: Any) -> None:
        self._conn: Protocol = protocol.conn
        self._transport: asyncio.WriteTransport = protocol.transport
        self._high_water = self._transport.get_write_buffer_limits()[1]
        self._flush_scheduled = False

    def ready(self) -> bool:
        if self._flush_scheduled:
            return True  # found ready for a frame this turn; the flush looks again
        transport = self._transport
        return (self._conn.state is State.OPEN and not transport.is_closing()
                and transport.get_write_buffer_size() <= self._high_water)

    def write(self, frame: bytes) -> None:
        self._conn.send_text(frame)
        writing = SocketFrames._writing
        if writing is not self:
            if writing is not None:
                writing._flush()
            SocketFrames._writing = self
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        # A send through uvicorn meanwhile wrote these frames already, before its own.
        self._flush_scheduled = False
        if SocketFrames._writing is self:
            SocketFrames._writing = None
        data = self._conn.data_to_send()
        if data and not self._transport.is_closing():
            self._transport.write(b"".join(data))


class DirectOperation(OperationFrames):
    """One subscription operation's frames on its socket: ``prefix`` + payload + ``}``."""

    __slots__ = ("_prefix", "_socket", "open")

    def __init__(self, socket: SocketFrames, prefix: bytes) -> None:
        super().__init__()
        self.group = socket
        self._socket = socket
        self._prefix = prefix
        self.open = True

    def ready(self) -> bool:
        return self.open and self._socket.ready()

    def write(self, payload: bytes) -> None:
        self._socket.write(self._prefix + payload + b"}")


def frame_prefix(encode_json: Callable[[object], str | bytes], message: dict[str, object]
                 ) -> bytes:
    """The bytes before the payload in ``message`` (whose last key is ``payload``) as the
    view encodes it: the message is encoded with a placeholder payload, which is cut off."""
    encoded = encode_json({**message, "payload": 0})
    data = encoded.encode() if isinstance(encoded, str) else encoded
    if not data.endswith(b"0}"):
        raise ValueError(f"cannot find the payload in {data!r}")
    return data[:-2]


def socket_frames(websocket: WebSocket) -> SocketFrames | None:
    protocol = websocket.scope.get(PROTOCOL)
    return SocketFrames(protocol) if protocol is not None else None
