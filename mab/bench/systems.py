"""The systems a benchmark runs: servers started pinned to cores, stopped by PID.

Each system under test runs in its own session (``start_new_session``), so
its CPU time can be read from /proc over every process of that session (the
gunicorn master, its workers, and the workers it reaped), and everything it
started can be stopped, also on Ctrl-C.
"""

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

from mab.cli.serve import gunicorn_command
from mab.testing.processes import CLK_TCK, cpu_ticks, free_port, kill_session, session_pids, terminate  # noqa: F401



class Server:
    """A system under test: started pinned to cores, stopped by PID."""

    def __init__(self, name, command, env, port, ready_path, cores):
        self.name = name
        self.command = command
        self.env = env
        self.port = port
        self.ready_path = ready_path
        self.cores = cores
        self.process = None
        self.log = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir):
        self.log = open(os.path.join(log_dir, f"{self.name.replace(os.sep, '_')}.log"), "w")
        # A new session: the server and all its workers share its session id.
        self.process = subprocess.Popen(
            ["taskset", "-c", self.cores, *self.command],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=log_dir,
        )

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log.name}")

    def cpu_snapshot(self):
        """Ticks per live PID, plus the master's reaped children (recycled workers)."""
        pids = session_pids(self.process.pid)
        return {pid: cpu_ticks(pid, include_children=(pid == self.process.pid)) for pid in pids}

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        terminate(self.process)
        kill_session(self.process.pid)   # an orphaned worker goes too
        if self.log:
            self.log.close()


class External:
    """A server someone else runs: load only, no CPU figures."""

    def __init__(self, name, url):
        self.name = name
        self._url = url.rstrip("/")

    @property
    def url(self):
        return self._url

    def start(self, log_dir):
        pass

    def wait_ready(self, timeout=120):
        pass

    def cpu_snapshot(self):
        return None

    def stop(self):
        pass


def python():
    """The interpreter that runs the servers: this one, so they run the same mab."""
    return sys.executable


def make_mab(name, args, worker_class=None, extra_env=None, app="mab.wsgi:app"):
    """mab under gunicorn, started as ``mab serve`` starts it (the packaged
    gunicorn settings), on a free port."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        MAB_DATA=args.data,
        WEB_CONCURRENCY=str(args.workers or len(args.server_cores.split(","))),
        GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
        MAB_CACHE_DIR=os.path.join(args.work_dir, "cache"),
    )
    env.pop("MAB_CONFIG", None)
    if worker_class:
        env["MAB_WORKER_CLASS"] = worker_class
    env.update(extra_env or {})
    command = gunicorn_command([], app=app, python=python())
    return Server(name, command, env, port, "/ready", args.server_cores)


class StandIn:
    """The local Vertex AI stand-in (mab.testing.vertex_standin), pinned to
    the load cores: it plays the remote feature store, not the server."""

    def __init__(self, args):
        self.args = args
        self.port = free_port()
        self.process = None
        self.log = None

    def start(self):
        if self.process is not None:
            return
        self.log = open(os.path.join(self.args.work_dir, "standin.log"), "w")
        self.process = subprocess.Popen(
            ["taskset", "-c", self.args.load_cores, python(), "-m", "mab.testing.vertex_standin",
             "--data", self.args.data, "--port", str(self.port), "--latency-ms", str(self.args.standin_latency_ms),
             "--keys-per-message", str(self.args.standin_keys_per_message)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.args.work_dir,
        )
        deadline = time.monotonic() + 60
        while "# serving" not in open(self.log.name).read():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the stand-in did not start; see {self.log.name}")
            time.sleep(0.1)

    def stop(self):
        terminate(self.process)
        if self.log:
            self.log.close()


# The resources the stand-in serves, per backend (its --help prints the same).
STANDIN_RESOURCES = {
    "vertex-legacy": 'featurestore = "mab"\nentity_type = "items"\n',
    "vertex": 'feature_online_store = "mab"\nfeature_view = "items"\n',
}


class RemoteStoreServer(Server):
    """mab on a Vertex backend: the stand-in starts first and stops last."""

    def __init__(self, standin, *a, **kw):
        super().__init__(*a, **kw)
        self.standin = standin

    def start(self, log_dir):
        self.standin.start()
        super().start(log_dir)

    def stop(self):
        super().stop()
        self.standin.stop()


def make_vertex(name, args, backend, cache, read_api=None):
    if args.standin is None:
        args.standin = StandIn(args)
    config = os.path.join(args.work_dir, f"{name}.toml")
    with open(config, "w") as f:
        f.write(
            f'[stores.default]\nbackend = "{backend}"\nproject = "local"\nlocation = "us-central1"\n'
            f"{STANDIN_RESOURCES[backend]}"
            f'api_endpoint = "127.0.0.1:{args.standin.port}"\nplaintext = true\n'
            f"cache_ttl_seconds = {600 if cache else 0}\n"
            + (f"cache_refresh_after_seconds = {args.cache_refresh_after}\n" if cache else "")
            + (f'read_api = "{read_api}"\n' if read_api else "")
        )
    server = make_mab(name, args, extra_env={"MAB_CONFIG": config})
    server.env.pop("MAB_DATA")
    return RemoteStoreServer(args.standin, name, server.command, server.env, server.port, "/ready", server.cores)


class DecisionLogServer(Server):
    """mab logging every decision (``log_fraction = 1``, the Parquet sink)
    into a directory of its own. Once stopped (the workers close their last
    files) it prints how many decisions were written and their bytes per
    decision, then removes the files: a run writes gigabytes."""

    def __init__(self, directory, *a, **kw):
        super().__init__(*a, **kw)
        self.directory = directory

    def stop(self):
        running = self.process is not None and self.process.poll() is None
        super().stop()
        if not running or not os.path.isdir(self.directory):
            return
        import pyarrow.parquet as pq

        rows = size = 0
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if name.endswith(".parquet") and not name.startswith("."):
                rows += pq.ParquetFile(path).metadata.num_rows
                size += os.path.getsize(path)
        per = f", {size / rows:,.0f} bytes per decision" if rows else ""
        print(f"{self.name}: {rows:,} decisions logged in {size / 1e6:,.1f} MB{per}; files removed",
              file=sys.stderr, flush=True)
        shutil.rmtree(self.directory, ignore_errors=True)


def make_decisionlog(name, args):
    """mab with every decision logged to Parquet files (mab.decisions), to
    measure what logging costs side by side with ``mab``."""
    directory = os.path.join(args.work_dir, f"{name}-decisions")
    config = os.path.join(args.work_dir, f"{name}.toml")
    with open(config, "w") as f:
        f.write(f'[models.default]\nlog_fraction = 1.0\n\n[decision_log]\ndirectory = "{directory}"\n')
    server = make_mab(name, args, extra_env={"MAB_CONFIG": config})
    return DecisionLogServer(directory, name, server.command, server.env, server.port, "/ready", server.cores)


def make_go(name, args, sampler):
    """The Go peer (``args.go_peer``, built with its build.sh if need be)
    with the sampler named ``go`` or ``cgo``."""
    if not args.go_peer or not os.path.isdir(args.go_peer):
        raise SystemExit(
            f"system {name!r} needs the Go peer's directory: pass --go-peer DIR "
            f"({args.go_peer or 'no default outside a checkout'} is not a directory)"
        )
    binary = os.path.join(args.go_peer, "bin", "go-peer")
    if not os.path.exists(binary):
        print(f"building the Go peer in {args.go_peer} ...", file=sys.stderr)
        subprocess.run(["./build.sh"], cwd=args.go_peer, check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    procs = str(len(args.server_cores.split(",")))
    command = [binary, "-data", args.data, "-sampler", sampler, "-addr", f"127.0.0.1:{port}", "-procs", procs]
    return Server(name, command, dict(os.environ), port, "/health", args.server_cores)


def make_system(spec, args):
    """The system named ``spec`` (see ``mab bench --help``), not yet started.

    ``SYSTEM@VAR=VALUE+VAR=VALUE`` is SYSTEM with those environment
    variables set for its server (say ``mab-vertex@MAB_WORKER_THREADS=4``),
    so that settings can be compared side by side in one run."""
    if spec.startswith("url="):
        return External(spec, spec[4:])
    base, _, overrides = spec.partition("@")
    if overrides:
        env = {}
        for pair in overrides.split("+"):
            var, sep, value = pair.partition("=")
            if not sep or not var:
                raise SystemExit(f"system {spec!r}: write overrides as SYSTEM@VAR=VALUE+VAR=VALUE")
            env[var] = value
        system = make_system(base, args)
        if not hasattr(system, "env"):
            raise SystemExit(f"system {spec!r}: {base!r} takes no environment")
        system.env.update(env)
        system.name = spec
        return system
    factories = {
        "mab": lambda: make_mab("mab", args),
        "mab-sync": lambda: make_mab("mab-sync", args, "sync"),
        "mab-gthread": lambda: make_mab("mab-gthread", args, "gthread", {"MAB_WORKER_THREADS": "4"}),
        "mab-nometrics": lambda: make_mab("mab-nometrics", args, extra_env={"MAB_METRICS": "0"}),
        "mab-decisionlog": lambda: make_decisionlog("mab-decisionlog", args),
        "mab-baseline": lambda: make_mab("mab-baseline", args, app="mab.baseline:create_baseline_app()"),
        "mab-vertex-legacy": lambda: make_vertex("mab-vertex-legacy", args, "vertex-legacy", cache=False),
        "mab-vertex-legacy-cache": lambda: make_vertex("mab-vertex-legacy-cache", args, "vertex-legacy", cache=True),
        "mab-vertex": lambda: make_vertex("mab-vertex", args, "vertex", cache=False),
        "mab-vertex-cache": lambda: make_vertex("mab-vertex-cache", args, "vertex", cache=True),
        "mab-vertex-fetch": lambda: make_vertex("mab-vertex-fetch", args, "vertex", cache=False, read_api="fetch"),
        "go": lambda: make_go("go", args, "go"),
        "go-cgo": lambda: make_go("go-cgo", args, "cgo"),
    }
    if spec not in factories:
        raise SystemExit(f"unknown system {spec!r}; known: {', '.join(factories)}, url=URL")
    return factories[spec]()

