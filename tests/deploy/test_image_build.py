"""Tests of deploy/Dockerfile's build (there is no mab.deploy package; these
test deploy/), carried out step by step outside a container, because this
machine cannot pull a base image:

1. the build context: the files .dockerignore lets through, copied;
2. the builder stage: its own `pip wheel` command, run in that copy with the
   stage's ENV (MAB_REQUIRE_OPENMP=1);
3. the runtime stage: its `python -m venv` and `pip install` of that wheel
   (into a fresh virtual environment: nothing from the source tree), and
   app.py and gunicorn.conf.py copied as its COPY says;
4. the container: the image's CMD, with the image's ENV and WORKDIR, with
   the virtual environment and the app read-only and HOME nonexistent under
   a read-only directory, so that a write anywhere but the places the image
   points at /tmp fails, as on a read-only root filesystem. (Not as the
   image's user: this machine's Python lives under /root, which no other
   user may enter. As root, the server runs without the capabilities that
   let root ignore file permissions, so the permissions hold for it too.)

Then /health, /ready and /predict answer, on an embedded store and on the
Vertex AI stand-in (run from the installed wheel) configured by
deploy/k8s's mab.toml.

Two departures from the Dockerfile, both about speed: pip's cache is used
(the Dockerfile's --no-cache-dir keeps it out of the image layer), and the
venv's dependencies are not byte-compiled (--no-compile; they are 390 MB,
compiling them doubles the install and proves nothing about the wheel).
"""

import glob
import http.client
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import zipfile

import pytest

from mab.testing.processes import free_port, terminate
from mab.testing.vertex_standin import SERVING_LINE, toml_table
from tests.deploy import image
from tests.deploy.manifests import configmap_for, resolved_env

pytestmark = pytest.mark.slow

N_ITEMS = 2000
STEP_TIMEOUT = 900        # seconds for one build or install step on a busy machine


def compiled_modules():
    """Dotted names of the package's Cython modules: every .pyx under mab/."""
    return sorted(
        os.path.splitext(os.path.relpath(path, image.ROOT))[0].replace(os.sep, ".")
        for path in glob.glob(os.path.join(image.ROOT, "mab", "**", "*.pyx"), recursive=True)
    )


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=STEP_TIMEOUT, **kwargs)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


class Layout:
    """Host directories standing in for the image's paths."""

    def __init__(self):
        # Not pytest's tmp_path: that lies under a 0700 directory the image's
        # user could not enter.
        self.base = tempfile.mkdtemp(prefix="mab-deploy-")
        os.chmod(self.base, 0o755)
        self.src = os.path.join(self.base, "src")        # the builder's /src
        self.venv = os.path.join(self.base, "venv")      # /opt/mab
        self.app = os.path.join(self.base, "app")        # /app
        self.tmp = os.path.join(self.base, "tmp")        # /tmp: an emptyDir
        self.data = os.path.join(self.base, "data")
        self.rootfs = os.path.join(self.base, "rootfs")  # the rest of the read-only root
        for path in (self.src, self.app, self.tmp, self.data, self.rootfs):
            os.makedirs(path)
        os.chmod(self.tmp, 0o1777)
        os.chmod(self.data, 0o755)
        os.chmod(self.rootfs, 0o555)

    def host(self, text, wheel_dir=None):
        """`text` with the image's paths replaced by these directories."""
        mapping = {"/opt/mab": self.venv, "/app": self.app, "/tmp": self.tmp}
        if wheel_dir is not None:
            mapping["/tmp/dist"] = wheel_dir
        # One pass, longest first, whole path components only: a host path
        # put in (itself under /tmp) is never rewritten again.
        pattern = "|".join(re.escape(path) for path in sorted(mapping, key=len, reverse=True))
        return re.sub(rf"(?<![\w./-])({pattern})(?![\w.-])", lambda match: mapping[match.group(1)], text)

    def remove(self):
        for directory, dirs, files in os.walk(self.base):
            os.chmod(directory, 0o755)
        shutil.rmtree(self.base)


def make_read_only(path):
    for directory, dirs, files in os.walk(path):
        for name in files:
            target = os.path.join(directory, name)
            if not os.path.islink(target):
                os.chmod(target, os.stat(target).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        os.chmod(directory, 0o555)


@pytest.fixture(scope="module")
def layout():
    layout = Layout()
    yield layout
    layout.remove()


@pytest.fixture(scope="module")
def wheel(layout):
    """The wheel, built from a copy of the build context by the builder stage's own command."""
    image.copy_context(layout.src)
    builder = image.builder_stage()
    command = image.run_with(builder, "pip wheel")
    env = dict(os.environ, **command.env)
    # `python` is the Python the tests run on, as it is the base image's in the builder.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    run(["/bin/sh", "-c", image.shell_command(command)], cwd=layout.src, env=env)
    (built,) = glob.glob(os.path.join(layout.src, "dist", "mab-*.whl"))
    return built


@pytest.fixture(scope="module")
def installed(layout, wheel):
    """The runtime stage: its venv, its install of the wheel, its COPY of the app."""
    runtime = image.runtime_stage()
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    run(["/bin/sh", "-c", layout.host(image.shell_command(image.run_with(runtime, "-m venv")))], cwd=layout.base, env=env)
    install = image.shell_command(image.run_with(runtime, "pip install"))
    install = install.replace("--no-cache-dir", "--no-compile")
    env["PATH"] = layout.host(runtime.one("CMD").env["PATH"]) + env["PATH"]
    run(["/bin/sh", "-c", layout.host(install, wheel_dir=os.path.dirname(wheel))], cwd=layout.base, env=env)
    for sources, destination in image.app_copies():
        for source in sources:
            shutil.copy(os.path.join(image.ROOT, source), layout.host(destination))
    make_read_only(layout.venv)
    make_read_only(layout.app)
    return layout


def test_the_wheel_holds_the_compiled_package_and_no_sources(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for module in compiled_modules():
        stem = module.replace(".", "/")
        assert any(name.startswith(stem + ".cpython-") and name.endswith(".so") for name in names), f"{module}: no extension"
    tracked = subprocess.run(["git", "ls-files", "mab/*.py", "mab/**/*.py"], cwd=image.ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert tracked and set(tracked) <= names, f"modules missing: {sorted(set(tracked) - names)}"
    assert "mab/openapi.json" in names
    sources = sorted(name for name in names if name.endswith((".c", ".pyx")))
    assert not sources, f"build sources in the wheel: {sources}"


def test_the_installed_package_comes_from_the_wheel(installed):
    """Imported with -I (no cwd, no PYTHONPATH) from elsewhere than the source
    tree: every compiled module loads from the venv, with OpenMP."""
    script = (
        "import importlib, json, sys, mab.sampling as s\n"
        "mods = {m: importlib.import_module(m).__file__ for m in sys.argv[1:]}\n"
        "print(json.dumps({'mab': importlib.import_module('mab').__file__, 'modules': mods, 'build': s.build_info(),\n"
        "                  'draws': s.sample_beta([2.0] * 8, [3.0] * 8, seed=1).tolist()}))\n"
    )
    python = os.path.join(installed.venv, "bin", "python")
    result = run([python, "-I", "-c", script, *compiled_modules()], cwd=installed.data)
    report = json.loads(result.stdout)
    site = os.path.join(installed.venv, "lib")
    assert report["mab"].startswith(site), report["mab"]
    for module, path in report["modules"].items():
        assert path.startswith(site) and path.endswith(".so"), (module, path)
    assert report["build"]["openmp"] is True, report["build"]
    assert all(0.0 <= value <= 1.0 for value in report["draws"])


def write_items(path):
    with open(path, "w") as f:
        f.write("item_id,successes,failures\n")
        for i in range(N_ITEMS):
            f.write(f"item-{i:06d},{(i * 7) % 1000},{(i * 131) % 100000}\n")


def render_toml(document):
    """A mab.toml: top-level keys, then one table per store and model."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in document.items() if not isinstance(value, dict)]
    for section in ("stores", "models"):
        for name, table in document.get(section, {}).items():
            lines += ["", toml_table(f"{section}.{name}", table)]
    return "\n".join(lines) + "\n"


def start_standin(venv, csv):
    """The Vertex AI stand-in, from the installed wheel; its store settings."""
    process = subprocess.Popen(
        [os.path.join(venv, "bin", "python"), "-I", "-m", "mab.testing.vertex_standin",
         "--data", csv, "--backend", "vertex"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    printed = []
    deadline = time.monotonic() + 120
    for line in process.stdout:          # it prints its settings, then serves
        printed.append(line)
        if line.strip() == SERVING_LINE or time.monotonic() > deadline:
            break
    assert printed and printed[-1].strip() == SERVING_LINE, "".join(printed)
    return process, tomllib.loads("".join(printed))["stores"]["default"]


def service_config(layout, csv, standin_settings):
    """deploy/k8s's mab.toml, its Vertex store pointed at the stand-in, plus
    an embedded store and model."""
    configmap, key = configmap_for(resolved_env()["MAB_CONFIG"])
    document = tomllib.loads(configmap["data"][key])
    for settings in document["stores"].values():
        for name in ("project", "location", "feature_online_store", "feature_view", "api_endpoint", "plaintext"):
            settings[name] = standin_settings[name]
    document["stores"]["embedded"] = {"path": csv}
    document["models"]["embedded"] = {"store": "embedded"}
    path = os.path.join(layout.data, "mab.toml")
    with open(path, "w") as f:
        f.write(render_toml(document))
    return path


class Logs:
    """The server's stdout and stderr, through a pipe as a container runtime
    gives them (gunicorn.conf.py's logs reopen /dev/stdout, which works for a
    pipe the process owns: runc gives a container's stdio to its user)."""

    def __init__(self, path):
        self.path = path
        self.read_end, self.write_end = os.pipe()
        self.thread = threading.Thread(target=self._copy, daemon=True)
        self.thread.start()

    def _copy(self):
        with open(self.path, "wb") as out, os.fdopen(self.read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                out.write(chunk)
                out.flush()

    def started(self):
        os.close(self.write_end)         # the child holds its own copy

    def text(self):
        with open(self.path, errors="replace") as f:
            return f.read()


def request(port, method, path, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def wait_ready(process, port, logs, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"gunicorn exited with {process.returncode}:\n{logs.text()}"
        try:
            status, body = request(port, "GET", "/ready")
            if status == 200:
                return body
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready after {timeout}s:\n{logs.text()}")


def test_the_image_command_serves_from_the_installed_wheel(installed):
    layout = installed
    csv = os.path.join(layout.data, "items.csv")
    write_items(csv)
    standin, standin_settings = start_standin(layout.venv, csv)
    server = None
    try:
        config = service_config(layout, csv, standin_settings)
        port = free_port()
        runtime = image.runtime_stage()
        env = {key: layout.host(value) for key, value in image.image_env().items()}
        env.update(
            PATH=layout.host(runtime.one("CMD").env["PATH"]) + "/usr/local/bin:/usr/bin:/bin",
            # Does not exist and cannot be made, as in the image.
            HOME=os.path.join(layout.rootfs, image.image_home().lstrip("/")),
            LANG="C.UTF-8",                     # the python base image's
            MAB_CONFIG=config,
            WEB_CONCURRENCY="2",
            GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
        )
        assert not os.path.exists(env["HOME"])
        command = [layout.host(part) for part in image.image_cmd()]
        if os.geteuid() == 0:
            # Root without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER
            # (gone from the bounding set, so from the exec'd program): file
            # permissions bind it like any user.
            command = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner",
                       "--", *command]
        logs = Logs(os.path.join(layout.base, "server.log"))
        server = subprocess.Popen(
            command, cwd=layout.host(runtime.all("WORKDIR")[-1].value), env=env,
            stdin=subprocess.DEVNULL, stdout=logs.write_end, stderr=logs.write_end,
            start_new_session=True,
        )
        logs.started()

        status, body = request(port, "GET", "/health") if wait_ready(server, port, logs) else (None, None)
        assert (status, body) == (200, {"status": "ok"})
        status, ready = request(port, "GET", "/ready")
        assert status == 200 and ready["status"] == "ready"
        assert ready["sampler"]["openmp"] is True
        assert ready["stores"]["default"]["backend"] == "vertex"
        assert ready["stores"]["default"]["cache"].get("enabled", True) is not False

        ids = [f"item-{i:06d}" for i in range(0, N_ITEMS, 5)] + ["not-in-the-data"]
        for model in ("default", "embedded"):
            status, answer = request(port, "POST", "/predict", {"item_ids": ids, "top_k": 10, "model": model})
            assert status == 200, answer
            assert len(answer["item_ids"]) == len(answer["scores"]) == 10
            assert set(answer["item_ids"]) <= set(ids)
            assert answer["missing"] == 1 and answer["degraded"] is False, answer

        # It wrote where the image says: the compiled embedded store and
        # gunicorn's control socket are under the stand-in for /tmp.
        assert os.listdir(env["MAB_CACHE_DIR"])
        assert os.path.exists(os.path.join(env["XDG_RUNTIME_DIR"], "gunicorn.ctl"))
    finally:
        terminate(server)
        terminate(standin)
    output = logs.text()
    assert server.returncode == 0, output
    for sign in ("Traceback", "Permission denied", "Read-only file system", "Failed to start control socket"):
        assert sign not in output, f"{sign!r} in the server's log:\n{output}"
