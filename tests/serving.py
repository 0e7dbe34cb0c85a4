"""Running gunicorn for tests: a server in its own session, stopped by PID."""

import http.client
import os
import subprocess
import sys
import time

import orjson

from mab.testing.processes import free_port, terminate  # noqa: F401 (re-exported to other tests)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    """gunicorn in its own process group, stopped by PID, serving `app`
    (module:variable, importable from the repository's root).

    The worker's queue limit is off (MAB_MAX_QUEUE_MS=0) unless `env` sets
    it: a busy test machine stalls a worker for 100 ms at times, and a test
    of something else must not meet a 503 for it. Admission control has its
    own tests (tests/http/test_overload.py).

    graceful_timeout is 5 s unless `env` sets MAB_GRACEFUL_TIMEOUT: a
    stopping worker keeps an idle keep-alive connection open for its next
    request (mab.http.worker), so a test that leaves one open would hold
    the stop that long (30 s by default)."""

    def __init__(self, tmp_path, env, app="app:app"):
        self.app = app
        self.port = free_port()
        self.log_path = tmp_path / "gunicorn.log"
        env = {"MAB_MAX_QUEUE_MS": "0", "MAB_GRACEFUL_TIMEOUT": "5", **env}
        self.env = dict(os.environ, GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{self.port}", **env)
        self.process = None

    def start(self):
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", os.path.join(ROOT, "gunicorn.conf.py"), "--chdir", ROOT, self.app],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def output(self):
        return self.log_path.read_text()

    def request(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def predict(self, doc):
        status, headers, body = self.request(
            "POST", "/predict", orjson.dumps(doc), {"Content-Type": "application/json"}
        )
        assert status == 200, body
        return headers["X-Served-By"], orjson.loads(body)

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.process.returncode}:\n{self.output()}")
            try:
                if self.request("GET", "/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready after {timeout}s:\n{self.output()}")

    def wait_for_workers(self, count, timeout=30):
        """The worker PIDs once there are `count` (gunicorn forks them one by one)."""
        deadline = time.monotonic() + timeout
        while len(pids := self.worker_pids()) != count and time.monotonic() < deadline:
            time.sleep(0.05)
        return pids

    def worker_pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return {int(pid) for pid in out.split()}

    def stop(self):
        terminate(self.process)
        self.log.close()
        return self.process.returncode
