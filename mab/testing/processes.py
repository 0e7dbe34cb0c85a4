"""Process helpers shared by the tests and the benchmark scripts."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


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


def session_pids(sid):
    """PIDs of every live process in session `sid` (a server and its workers), from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:       # field 6 of stat: the session id
                pids.append(int(entry))
    return pids


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid, include_children=False):
    """utime + stime of one process (and of its reaped children), in ticks; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    ticks = int(fields[11]) + int(fields[12])           # utime, stime
    if include_children:
        ticks += int(fields[13]) + int(fields[14])      # cutime, cstime
    return ticks


def cpu_seconds(pids):
    """CPU time (s) the processes `pids` have used so far, together."""
    return sum(cpu_ticks(pid) for pid in pids) / CLK_TCK


def kill_session(sid):
    """SIGKILL whatever is still alive in session `sid` (an orphaned worker)."""
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for_200(process, url, timeout, what):
    """Poll ``url`` until it answers 200. Raises ``RuntimeError`` naming
    ``what`` if ``process`` (a Popen) exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout}s")


class Gunicorn:
    """The service under gunicorn with the repository's gunicorn.conf.py
    (`root`: the checkout), or with `root` None as ``mab serve`` runs it
    (the packaged mab/gunicorn_conf.py and mab.wsgi:app), in its own
    session, pinned to `cores` (a taskset list such as "0") when given,
    logging to `log_path`; stopped by PID, with anything of its session
    left over. `env` adds to (and overrides) os.environ."""

    def __init__(self, root, env, log_path, *, cores=None, app=None, python=None):
        self.root = root
        self.port = free_port()
        self.env = dict(os.environ, **env)
        self.env["GUNICORN_CMD_ARGS"] = f"--bind 127.0.0.1:{self.port} " + env.get("GUNICORN_CMD_ARGS", "")
        self.log_path = log_path
        self.cores = cores
        self.app = app or ("app:app" if root else "mab.wsgi:app")
        self.python = python or sys.executable
        self.process = None
        self._log = None

    def start(self):
        self._log = open(self.log_path, "w")
        if self.root is None:
            from mab.cli.serve import gunicorn_command

            command = gunicorn_command([], app=self.app, python=self.python)
        else:
            command = [self.python, "-m", "gunicorn", "-c", os.path.join(self.root, "gunicorn.conf.py"), self.app]
        if self.cores is not None:
            command = ["taskset", "-c", self.cores, *command]
        self.process = subprocess.Popen(command, env=self.env, cwd=self.root or os.path.dirname(self.log_path),
                                        stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout=120, path="/ready"):
        wait_for_200(self.process, f"http://127.0.0.1:{self.port}{path}", timeout, f"gunicorn (see {self.log_path})")

    def worker_pids(self):
        return [pid for pid in session_pids(self.process.pid) if pid != self.process.pid]

    def output(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        if self.process is None:
            return
        terminate(self.process)
        kill_session(self.process.pid)
        if self._log:
            self._log.close()
