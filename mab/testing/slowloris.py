"""Slow clients for tests and scripts: connections that send a request head
one byte at a time and never finish it (the "slowloris" attack).

    with Slowloris(port, 1000, interval=1.0) as slow:
        ...                         # measure a normal client meanwhile
    slow.reopened                   # connections the server closed, opened again

A thread sends one byte on every connection each `interval` seconds; a
connection the server closes (a 408 for a head that took too long, or room
made for a new client) is opened again at once, so the pressure holds. The
open file limit is raised to fit `count` sockets when it can be.
"""

import resource
import socket
import threading

HEAD = b"GET /health HTTP/1.1\r\nHost: slowloris\r\nX-Slow: "


def raise_open_file_limit(needed):
    """Raise this process's soft limit of open files to `needed` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class Slowloris:
    """`count` connections to 127.0.0.1:`port`, each sending one byte of an
    endless header every `interval` seconds."""

    def __init__(self, port, count, interval=1.0, host="127.0.0.1"):
        self.address = (host, port)
        self.count = count
        self.interval = interval
        self.reopened = 0
        self.failed = 0                     # connections that could not be opened again
        self.socks = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def _open(self):
        sock = socket.create_connection(self.address, timeout=5)
        sock.setblocking(False)
        sock.send(HEAD)
        return sock

    def __enter__(self):
        raise_open_file_limit(self.count + 256)
        try:
            for _ in range(self.count):
                self.socks.append(self._open())
        except BaseException:
            self.close()
            raise
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            for i, sock in enumerate(self.socks):
                if self._stop.is_set():
                    return
                try:
                    if sock.send(b"a") != 1:
                        raise OSError("nothing sent")
                    try:
                        if sock.recv(65536) == b"":
                            raise OSError("closed by the server")
                    except BlockingIOError:
                        pass                # no answer: still dawdling, as intended
                except OSError:
                    sock.close()
                    try:
                        self.socks[i] = self._open()
                        self.reopened += 1
                    except OSError:
                        self.failed += 1

    def close(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        for sock in self.socks:
            sock.close()

    def __exit__(self, *exc):
        self.close()
