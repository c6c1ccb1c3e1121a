"""A small TCP proxy in front of a real server that can be cut and restored: the server keeps
its contents while clients see it go away (connections accepted and dropped at once)."""
from __future__ import annotations

import socket
import threading
from contextlib import suppress


class FlakyProxy:
    """127.0.0.1:<port> → target; `down()` drops every connection, `up()` forwards again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self.dropped = 0          # connections refused while down
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self, *, cut: bool = False) -> None:
        """Refuse new connections; with `cut`, also break the open ones (a crash or network cut,
        not just a server that stopped accepting)."""
        self._up.clear()
        if cut:
            with self._lock:
                live, self._live = self._live, set()
            for sock in live:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with suppress(OSError):
                    sock.close()

    def up(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed = True
        with suppress(OSError):
            self._sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if not self._up.is_set():
                self.dropped += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()                          # RST: the client sees the connection dropped
                continue
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._live.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
