"""A loopback TCP proxy in front of a real server that can cut every connection and leave the next handshakes
unanswered: what a client sees of a ZooKeeper 3.8 server that accepts a connection during its start and never
answers it (ZOOKEEPER-5051: the close hits a NullPointerException, so the socket stays open and silent).

``StallProxy(upstream).start()``; :meth:`StallProxy.stall_next` makes the next ``n`` new connections hang (accepted,
never forwarded, never closed until the client gives up); :meth:`StallProxy.cut` closes every open connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from zkharness import free_port


class StallProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream`` (``host:port``). :attr:`accepted` has the time (monotonic) of every
    connection accepted, :attr:`stalls` of those left hanging."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.port = free_port()
        self.accepted: list[float] = []
        self.stalls: list[float] = []
        self._to_stall = 0
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> StallProxy:
        threading.Thread(target=self._accept, name="stallproxy", daemon=True).start()
        return self

    def stall_next(self, count: int = 1) -> None:
        with self._lock:
            self._to_stall = count

    def cut(self) -> None:
        """Close every open connection, as a server's exit does."""
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted.append(time.monotonic())
                stall = self._to_stall > 0
                self._to_stall -= stall
                if stall:
                    self.stalls.append(self.accepted[-1])
                self._open.append(client)
            if stall:
                continue  # accepted, never answered: the client's handshake waits until it gives up
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.append(server)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
