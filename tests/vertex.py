"""The Vertex AI stand-in for tests: stores reading from it, and its command
run as a process of its own (started here, stopped by PID)."""

import os
import selectors
import subprocess
import sys
import time
import tomllib

from mab.config import config_from_document
from mab.stores import create_store
from mab.testing.vertex_standin import SERVING_LINE
from tests.serving import terminate

FEATURES = ("successes", "failures")
# The backends, and "vertex-fetch": the vertex backend with read_api "fetch"
# (one key per FetchFeatureValues call) instead of its streaming default.
BACKENDS = ("vertex-legacy", "vertex", "vertex-fetch")
VARIANTS = {"vertex-fetch": ("vertex", {"read_api": "fetch"})}


def vertex_config(standin, backend, store_settings=None, models=None, **environ):
    """A Config whose store ``default`` reads from the stand-in; ``backend``
    may be one of VARIANTS."""
    backend, variant = VARIANTS.get(backend, (backend, {}))
    table = dict(standin.store_settings(backend), **variant, **(store_settings or {}))
    document = {"stores": {"default": table}}
    if models:
        document["models"] = models
    environ.setdefault("MAB_CACHE_DIR", os.devnull)   # a remote store writes nothing
    return config_from_document(document, environ)


def make_store(standin, backend, **settings):
    """A loaded store of ``backend`` reading from the stand-in; close it after use."""
    config = vertex_config(standin, backend, settings)
    store = create_store(config.stores["default"], config.cache_dir)
    store.load()
    return store


class StandInProcess:
    """``python -m mab.testing.vertex_standin`` in its own session."""

    def __init__(self, tmp_path, data, *args):
        self.command = [sys.executable, "-m", "mab.testing.vertex_standin", "--data", str(data), *args]
        self.log_path = tmp_path / "standin.log"
        self.process = None
        self.printed = ""

    def start(self, timeout=60):
        """Start it and wait until it has printed its settings, i.e. is serving.

        Reads the pipe's bytes as they come (a buffered readline could hold
        the last lines while select waits for more); stops the process if it
        does not get there.
        """
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=self.log, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        printed = b""
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.process.stdout, selectors.EVENT_READ)
                while not printed.endswith(SERVING_LINE.encode() + b"\n"):
                    if not selector.select(max(0.0, deadline - time.monotonic())):
                        raise AssertionError(f"the stand-in printed no settings in {timeout}s: {self.output()}")
                    chunk = os.read(self.process.stdout.fileno(), 65536)
                    if not chunk:
                        raise AssertionError(f"the stand-in exited with {self.process.wait(10)}: {self.output()}")
                    printed += chunk
        except BaseException:
            self.stop()
            raise
        self.printed = printed.decode()
        return self

    @property
    def settings(self):
        return tomllib.loads(self.printed)["stores"]["default"]

    def output(self):
        return self.log_path.read_text()

    def stop(self):
        if self.process is None or self.log.closed:
            return None if self.process is None else self.process.returncode
        terminate(self.process)
        self.process.stdout.close()
        self.log.close()
        return self.process.returncode


def struct_entry(key, **values):
    """A raw FetchFeatureValuesResponse in PROTO_STRUCT format; a value of
    None is a null, a str a string, a bool a bool, a number a number (a
    feature not named has no field)."""
    from google.cloud.aiplatform_v1beta1.types import feature_online_store_service as types

    entry = types.FetchFeatureValuesResponse.pb()()
    entry.data_key.key = key
    entry.proto_struct.SetInParent()
    fields = entry.proto_struct.fields
    for name, value in values.items():
        if value is None:
            fields[name].null_value = 0
        elif isinstance(value, bool):
            fields[name].bool_value = value
        elif isinstance(value, str):
            fields[name].string_value = value
        else:
            fields[name].number_value = value
    return entry
