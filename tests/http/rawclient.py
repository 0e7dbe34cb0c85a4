"""A raw HTTP/1.1 client for the worker tests: bytes out, responses in."""

import socket
import time

import orjson


class Client:
    """One TCP connection; reads responses framed by Content-Length, chunks
    or the close, and interim (1xx) responses as responses of their own."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            self.eof = True
            raise ConnectionError("closed by the server")
        self.buffer += chunk

    def response(self, method="GET"):
        """(status, headers with lower-case names, body) of the next response."""
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        if status < 200 or status in (204, 304) or method == "HEAD":
            body = b""
        elif "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buffer) < n:
                self._fill()
            body, self.buffer = self.buffer[:n], self.buffer[n:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buffer:
                    self._fill()
                size_line, self.buffer = self.buffer.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(self.buffer) < size + 2:
                    self._fill()
                body, self.buffer = body + self.buffer[:size], self.buffer[size + 2:]
                if size == 0:
                    break
        else:
            try:
                while True:
                    self._fill()
            except ConnectionError:
                pass
            body, self.buffer = self.buffer, b""
        return status, headers, body

    def closed(self, timeout=5):
        """True once the server closes the connection (within `timeout`),
        with nothing more sent; False if it stays open that long."""
        if self.eof:
            return not self.buffer
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return not self.buffer
                self.buffer += chunk
        except (ConnectionResetError, BrokenPipeError):
            return not self.buffer
        except socket.timeout:
            return False

    def ready(self, timeout):
        """Whether response bytes arrive within `timeout` (they stay buffered)."""
        if self.buffer:
            return True
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return False
        finally:
            self.sock.settimeout(10)
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def close(self):
        self.sock.close()


def error_code(body):
    return orjson.loads(body)["error"]["code"]


def wait_closed(client, timeout):
    """Seconds until the server closed `client`'s connection, or None."""
    started = time.monotonic()
    return time.monotonic() - started if client.closed(timeout) else None
