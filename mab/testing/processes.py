"""Process helpers shared by the tests and the benchmark scripts."""

import os
import signal
import socket
import subprocess


def terminate(process, timeout=30):
    """SIGTERM by PID, then SIGKILL to its process group if it does not exit."""
    if process is None or process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
