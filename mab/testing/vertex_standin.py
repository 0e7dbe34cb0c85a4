"""A local stand-in for Vertex AI Feature Store's online serving.

A gRPC server that answers, from a CSV file, the two online-serving services
that mab's Vertex backends call:

- ``google.cloud.aiplatform.v1.FeaturestoreOnlineServingService`` (the legacy
  Featurestore): ``StreamingReadFeatureValues`` and ``ReadFeatureValues`` on
  one entity type;
- ``google.cloud.aiplatform.v1.FeatureOnlineStoreService`` (Vertex AI Feature
  Store): ``FetchFeatureValues`` on one feature view;
- ``google.cloud.aiplatform.v1beta1.FeatureOnlineStoreService``: the same and
  the bidirectional ``StreamingFetchFeatureValues``, which carries many data
  keys per request message and answers with batches (``data[]``) of
  ``FetchFeatureValuesResponse``, each naming its ``data_key``.

It speaks the real wire format: requests and responses are the protobuf
messages shipped in ``google-cloud-aiplatform``. GAPIC libraries ship no
servicer base classes, so the methods are served through grpc's generic
method handlers, with the raw protobuf classes under the library's proto-plus
types doing the (de)serialization: the same bytes as proto-plus's
``serialize``/``deserialize``, for less CPU. The real client library talks to
it through a transport built on ``grpc.insecure_channel``.

The CSV has the embedded store's layout: a header naming the id column and
the feature columns, then one row per entity. Values are served typed as they
are written: ``33`` as an int64 value, ``2.5`` (or ``nan``) as a double,
anything else as a string, and an empty cell as no value. Nothing is
validated, so tests can serve bad data on purpose.

Fault knobs, attributes that may be changed while serving: ``latency``
(seconds added to every call), ``fail_next`` (the next N calls fail with
UNAVAILABLE), ``hang`` (calls never answer; the client's deadline ends them),
``break_stream_after`` (the next streaming read or streaming fetch sends that
many entities, then fails with UNAVAILABLE), ``max_ids`` (a call, or a
streaming fetch's request message, with more entity ids fails with
INVALID_ARGUMENT, as the real service's limit of 100 does) and ``error_keys``
(keys a streaming fetch answers in ``data_keys_with_error`` with an INTERNAL
status). Two knobs shape streaming fetches: ``keys_per_message`` (keys per
response message; 0, the default, answers each request message with one
response message, 1 is the worst case) and ``shuffle`` (answer the keys out
of order). In a streaming fetch the fault knobs act on each request
message (``fail_next`` counts messages, and aborts the stream). Every call is recorded in ``calls`` with the
number of entity ids it carried (a streaming fetch: one record per request
message, as ``StreamingFetchFeatureValues``), unless ``record_calls`` is
off, as it is for the command; ``streams`` counts the
streaming fetch calls opened; ``max_in_flight`` is the most calls served at
once.

How a streaming fetch answers a key the feature view does not hold is not
documented; the stand-in answers it like an entity with no values (a
``data`` entry with the key and no features), which mab reads as missing,
and keeps ``data_keys_with_error`` for real errors (mab reads those as
failed).

From a shell::

    python -m mab.testing.vertex_standin --data data/items.csv --port 9010 > standin.toml

prints the ``[stores.default]`` table that points mab at it (run mab with
``MAB_CONFIG=standin.toml``) and serves until SIGINT or SIGTERM.
"""

import argparse
import asyncio
import contextlib
import csv
import gc
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass

import grpc
from google.cloud.aiplatform_v1.types import feature_online_store_service as online_store_types
from google.cloud.aiplatform_v1.types import featurestore_online_service as legacy_types
from google.cloud.aiplatform_v1beta1.types import feature_online_store_service as beta_types
from mab.stores._csv import TIMESTAMP_COLUMN, parse_time

LEGACY_SERVICE = "google.cloud.aiplatform.v1.FeaturestoreOnlineServingService"
ONLINE_STORE_SERVICE = "google.cloud.aiplatform.v1.FeatureOnlineStoreService"
BETA_ONLINE_STORE_SERVICE = "google.cloud.aiplatform.v1beta1.FeatureOnlineStoreService"

# The raw protobuf classes under the library's proto-plus types.
StreamingReadRequest = legacy_types.StreamingReadFeatureValuesRequest.pb()
ReadRequest = legacy_types.ReadFeatureValuesRequest.pb()
ReadResponse = legacy_types.ReadFeatureValuesResponse.pb()
FetchRequest = online_store_types.FetchFeatureValuesRequest.pb()
FetchResponse = online_store_types.FetchFeatureValuesResponse.pb()
PROTO_STRUCT = int(online_store_types.FeatureViewDataFormat.PROTO_STRUCT)
StreamingFetchRequest = beta_types.StreamingFetchFeatureValuesRequest.pb()
StreamingFetchResponse = beta_types.StreamingFetchFeatureValuesResponse.pb()
BetaFetchRequest = beta_types.FetchFeatureValuesRequest.pb()
BetaFetchResponse = beta_types.FetchFeatureValuesResponse.pb()
# google.rpc.Code values (google/rpc/code.proto) for a response's status.
RPC_CODE_INTERNAL = 13

# The legacy service's limit on entity ids per StreamingReadFeatureValues call.
MAX_IDS = 100
# What Vertex AI Feature Store answers, with NOT_FOUND, for a key it does not hold.
NOT_FOUND_MESSAGE = "Requested entity was not found."
# The last line the command prints: everything before it is the settings.
SERVING_LINE = "# serving; stop with Ctrl-C or SIGTERM"


@dataclass(frozen=True)
class Call:
    method: str
    ids: int          # entity ids (keys) the call carried


def parse_value(text):
    """A CSV cell as the typed value the stand-in serves (None: no value)."""
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_csv(path):
    """(feature names, {entity id: {feature: typed value}})."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        header = [name.strip() for name in next(rows)]
        features = header[1:]
        data = {}
        for row in rows:
            if row:
                data[row[0]] = {name: parse_value(text) for name, text in zip(features, row[1:])}
    return features, data


def set_value(feature_value, value, generate_time=None):
    """Write a Python value into a FeatureValue message, typed as it is, with
    ``generate_time`` (Unix seconds) as its metadata.generate_time if given."""
    if isinstance(value, int):
        feature_value.int64_value = value
    elif isinstance(value, float):
        feature_value.double_value = value
    else:
        feature_value.string_value = value
    if generate_time is not None:
        stamp = feature_value.metadata.generate_time
        stamp.seconds = int(generate_time)
        stamp.nanos = int(round((generate_time - int(generate_time)) * 1e9))


def toml_table(name, settings):
    lines = [f"[{name}]"]
    for key, value in settings.items():
        text = ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines)


class VertexStandIn:
    """Both online-serving services over one table of features.

    ``record_calls``: keep every call's method and ids in ``calls`` (tests
    read them). The command (``run``) turns it off: a stand-in serving a
    benchmark gets thousands of calls a second, and the list would grow
    without bound, and with it the pauses of Python's garbage collector,
    which the client would see as the service's latency.
    """

    def __init__(
        self,
        features,
        data,
        *,
        project="local",
        location="us-central1",
        featurestore="mab",
        entity_type="items",
        feature_online_store="mab",
        feature_view="items",
        latency=0.0,
        fail_next=0,
        hang=False,
        max_ids=MAX_IDS,
        keys_per_message=0,
        shuffle=False,
        seed=None,
        record_calls=True,
    ):
        # The embedded store's updated_at column is served as what Vertex has
        # instead: every value's metadata.generate_time.
        self.generate_times = {}
        if TIMESTAMP_COLUMN in features:
            for entity_id, row in data.items():
                stamp = row.pop(TIMESTAMP_COLUMN, None)
                if stamp is not None:
                    self.generate_times[entity_id] = parse_time(str(stamp).encode())
            features = [name for name in features if name != TIMESTAMP_COLUMN]
        self.features = tuple(features)
        self.data = data
        self.project = project
        self.location = location
        self.featurestore = featurestore
        self.entity_type = entity_type
        self.feature_online_store = feature_online_store
        self.feature_view = feature_view
        base = f"projects/{project}/locations/{location}"
        self.entity_type_name = f"{base}/featurestores/{featurestore}/entityTypes/{entity_type}"
        self.feature_view_name = f"{base}/featureOnlineStores/{feature_online_store}/featureViews/{feature_view}"
        self.latency = latency
        self.fail_next = fail_next
        self.hang = hang
        self.break_stream_after = None
        self.max_ids = max_ids
        self.keys_per_message = keys_per_message
        self.shuffle = shuffle
        self.error_keys = frozenset()
        self._random = random.Random(seed)
        self.streams = 0
        self.calls = []
        self.record_calls = record_calls
        self._arrivals = 0   # calls begun, ever: quiesce() watches it
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        # Serialized answers for entities that exist, built on first use.
        self._encoded = {}
        self.host = None
        self.port = None
        self._loop = None
        self._thread = None
        self._server = None

    @classmethod
    def from_csv(cls, path, **kwargs):
        features, data = read_csv(path)
        return cls(features, data, **kwargs)

    # -- knobs and counters --------------------------------------------------

    def reset(self):
        """No faults, no recorded calls, streaming answers in one message per request message, in order."""
        with self._lock:
            self.keys_per_message = 0
            self.shuffle = False
            self.latency = 0.0
            self.fail_next = 0
            self.hang = False
            self.break_stream_after = None
            self.error_keys = frozenset()
            self.calls = []
            self.streams = 0
            self.max_in_flight = self.in_flight

    def quiesce(self, quiet=0.1, timeout=5.0):
        """Wait until no call is in flight and none has begun for ``quiet``
        seconds (at most ``timeout``): after a test closes its clients, a call
        they sent may still reach the server late on a busy machine, and must
        not be counted as the next test's. Returns whether it got quiet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                seen, busy = self._arrivals, self.in_flight
            time.sleep(quiet)
            with self._lock:
                if not busy and not self.in_flight and self._arrivals == seen:
                    return True
        return False

    def ids_per_call(self, method=None):
        with self._lock:
            return [call.ids for call in self.calls if method is None or call.method == method]

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def store_settings(self, backend="vertex-legacy"):
        """The ``[stores.NAME]`` table of a mab store served by this stand-in."""
        settings = {"backend": backend, "project": self.project, "location": self.location}
        if backend == "vertex-legacy":
            settings.update(featurestore=self.featurestore, entity_type=self.entity_type)
        elif backend == "vertex":
            settings.update(feature_online_store=self.feature_online_store, feature_view=self.feature_view)
        else:
            raise ValueError(f"no such Vertex backend: {backend!r}")
        settings.update(api_endpoint=self.address, plaintext=True)
        return settings

    # -- serving ---------------------------------------------------------------

    def _handlers(self):
        # No response serializers: the handlers answer with bytes.
        return [
            grpc.method_handlers_generic_handler(
                LEGACY_SERVICE,
                {
                    "StreamingReadFeatureValues": grpc.unary_stream_rpc_method_handler(
                        self._streaming_read, request_deserializer=StreamingReadRequest.FromString
                    ),
                    "ReadFeatureValues": grpc.unary_unary_rpc_method_handler(
                        self._read, request_deserializer=ReadRequest.FromString
                    ),
                },
            ),
            grpc.method_handlers_generic_handler(
                ONLINE_STORE_SERVICE,
                {
                    "FetchFeatureValues": grpc.unary_unary_rpc_method_handler(
                        self._fetch, request_deserializer=FetchRequest.FromString
                    ),
                },
            ),
            grpc.method_handlers_generic_handler(
                BETA_ONLINE_STORE_SERVICE,
                {
                    # The v1beta1 messages of FetchFeatureValues are the v1
                    # ones with one more field (data_key), unset here.
                    "FetchFeatureValues": grpc.unary_unary_rpc_method_handler(
                        self._fetch, request_deserializer=BetaFetchRequest.FromString
                    ),
                    "StreamingFetchFeatureValues": grpc.stream_stream_rpc_method_handler(
                        self._streaming_fetch, request_deserializer=StreamingFetchRequest.FromString
                    ),
                },
            ),
        ]

    @contextlib.contextmanager
    def _tracking(self, method, ids, context):
        with self._lock:
            self._arrivals += 1
            if self.record_calls:
                self.calls.append(Call(method, ids))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _faults(self, context):
        fault = await self._fault()
        if fault is not None:
            await context.abort(*fault)

    async def _fault(self):
        """Wait the latency, then: None, or the (code, message) to abort
        with; never returns while ``hang`` is set (until cancelled)."""
        with self._lock:
            fail = self.fail_next > 0
            if fail:
                self.fail_next -= 1
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if fail:
            return grpc.StatusCode.UNAVAILABLE, "stand-in: injected failure"
        if self.hang:
            # Until the client's deadline (or the server's stop) cancels the call.
            await asyncio.Event().wait()
        return None

    async def _legacy_features(self, entity_type, selector, ids, context):
        """The requested feature ids, in order, or abort the call."""
        if entity_type != self.entity_type_name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"EntityType {entity_type} does not exist.")
        if not ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "entity_ids must not be empty.")
        if len(ids) > self.max_ids:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"At most {self.max_ids} entity ids may be read in one request; got {len(ids)}.",
            )
        wanted = tuple(dict.fromkeys(selector.id_matcher.ids))   # the service deduplicates them
        if wanted == ("*",):
            return self.features
        unknown = [name for name in wanted if name not in self.features]
        if not wanted or unknown:
            # The real service rejects the call too; its exact status for an
            # unknown feature id is not documented, INVALID_ARGUMENT is a guess.
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Features {unknown or wanted} do not exist under EntityType {entity_type}.",
            )
        return wanted

    def _legacy_header(self, features):
        response = ReadResponse()
        response.header.entity_type = self.entity_type_name
        for name in features:
            response.header.feature_descriptors.add(id=name)
        return response

    def _legacy_entity(self, entity_id, features):
        """One entity's view, serialized.

        The real legacy service answers an entity it does not hold exactly as
        an entity none of whose requested features has a value: an entity
        view with the id and one empty ``Data`` per requested feature, no
        error (it "returns null" for a feature without a value, see "Serve
        features from the online store / Null values" in its documentation;
        Apache Beam's Vertex AI enrichment handler detects absent entities the
        same way). So does the stand-in.
        """
        key = ("legacy", features, entity_id)
        encoded = self._encoded.get(key)
        if encoded is None:
            response = ReadResponse()
            view = response.entity_view
            view.entity_id = entity_id
            row = self.data.get(entity_id)
            for name in features:
                data = view.data.add()
                value = None if row is None else row.get(name)
                if value is not None:
                    set_value(data.value, value, self.generate_times.get(entity_id))
            encoded = response.SerializeToString()
            if row is not None:   # only existing entities: unknown ids must not grow the memo
                self._encoded[key] = encoded
        return encoded

    async def _streaming_read(self, request, context):
        ids = list(request.entity_ids)
        with self._tracking("StreamingReadFeatureValues", len(ids), context):
            features = await self._legacy_features(request.entity_type, request.feature_selector, ids, context)
            await self._faults(context)
            with self._lock:
                break_after, self.break_stream_after = self.break_stream_after, None
            yield self._legacy_header(features).SerializeToString()
            for i, entity_id in enumerate(ids):
                if i == break_after:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "stand-in: injected failure mid-stream")
                yield self._legacy_entity(entity_id, features)

    async def _read(self, request, context):
        ids = [request.entity_id]
        with self._tracking("ReadFeatureValues", 1, context):
            features = await self._legacy_features(request.entity_type, request.feature_selector, ids, context)
            await self._faults(context)
            response = self._legacy_header(features)
            response.MergeFromString(self._legacy_entity(request.entity_id, features))
            return response.SerializeToString()

    async def _fetch(self, request, context):
        with self._tracking("FetchFeatureValues", 1, context):
            if request.data_key.WhichOneof("key_oneof") != "key":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "stand-in: only simple data keys are served")
            await self._faults(context)
            # The real service answers NOT_FOUND ("Requested entity was not
            # found.") for a key the feature view does not hold, and the same
            # for a feature view that does not exist (Apache Beam's Vertex AI
            # enrichment handler documents both). So does the stand-in.
            row = self.data.get(request.data_key.key) if request.feature_view == self.feature_view_name else None
            if row is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, NOT_FOUND_MESSAGE)
            return self._online_entity(request.data_key.key, row, request.data_format)

    def _online_entity(self, key, row, data_format):
        memo_key = ("online", int(data_format), key)
        encoded = self._encoded.get(memo_key)
        if encoded is None:
            response = FetchResponse()
            if data_format == PROTO_STRUCT:
                fields = response.proto_struct.fields
                for name in self.features:
                    value = row.get(name)
                    if value is None:
                        fields[name].null_value = 0
                    elif isinstance(value, str):
                        fields[name].string_value = value
                    else:
                        fields[name].number_value = float(value)
            else:   # KEY_VALUE, also what an unspecified format means
                pairs = response.key_values.features
                for name in self.features:
                    pair = pairs.add()
                    pair.name = name
                    value = row.get(name)
                    if value is not None:
                        set_value(pair.value, value, self.generate_times.get(key))
            encoded = self._encoded[memo_key] = response.SerializeToString()
        return encoded


    async def _streaming_fetch(self, request_iterator, context):
        """Answers each request message's keys in ``data[]`` batches.

        Request messages are answered concurrently, each in a task of its
        own (their latencies overlap, as on a real service, which may answer
        out of order), and the answers leave through one queue.
        """
        with self._lock:
            self.streams += 1
        answers = asyncio.Queue()
        state = {"sent": 0, "break_after": None}

        async def read_requests():
            tasks = []
            async for request in request_iterator:
                tasks.append(asyncio.ensure_future(self._answer_request(request, state, answers, context)))
            await asyncio.gather(*tasks)
            await answers.put(None)

        reader = asyncio.ensure_future(read_requests())
        try:
            while True:
                answer = await answers.get()
                if answer is None:
                    return
                if type(answer) is tuple:
                    await context.abort(*answer)
                yield answer
        finally:
            reader.cancel()

    async def _answer_request(self, request, state, answers, context):
        """Put one request message's answers (bytes) on ``answers``, or a
        (code, message) tuple that aborts the stream."""
        keys = []
        for data_key in request.data_keys:
            if data_key.WhichOneof("key_oneof") != "key":
                await answers.put((grpc.StatusCode.INVALID_ARGUMENT, "stand-in: only simple data keys are served"))
                return
            keys.append(data_key.key)
        with self._tracking("StreamingFetchFeatureValues", len(keys), context):
            if not keys:
                await answers.put((grpc.StatusCode.INVALID_ARGUMENT, "data_keys must not be empty."))
                return
            if len(keys) > self.max_ids:
                await answers.put((
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"At most {self.max_ids} data keys may be read in one request; got {len(keys)}.",
                ))
                return
            # The fault knobs act per request message: a stream may be long-lived.
            fault = await self._fault()
            if fault is None and request.feature_view != self.feature_view_name:
                fault = grpc.StatusCode.NOT_FOUND, NOT_FOUND_MESSAGE   # like FetchFeatureValues: the call fails
            if fault is not None:
                await answers.put(fault)
                return
            with self._lock:
                if self.shuffle:
                    self._random.shuffle(keys)
                if state["break_after"] is None and self.break_stream_after is not None:
                    state["break_after"] = state["sent"] + self.break_stream_after
                    self.break_stream_after = None
            errors = [key for key in keys if key in self.error_keys]
            answered = [key for key in keys if key not in self.error_keys]
            size = self.keys_per_message or len(answered) or 1
            for start in range(0, len(answered), size):
                batch = answered[start : start + size]
                break_after = state["break_after"]
                if break_after is not None and state["sent"] + len(batch) > break_after:
                    batch = batch[: break_after - state["sent"]]
                    if batch:
                        await answers.put(self._streaming_answer(batch, request.data_format))
                    await answers.put((grpc.StatusCode.UNAVAILABLE, "stand-in: injected failure mid-stream"))
                    return
                state["sent"] += len(batch)
                await answers.put(self._streaming_answer(batch, request.data_format))
            if errors:
                response = StreamingFetchResponse()
                response.status.code = RPC_CODE_INTERNAL
                response.status.message = "stand-in: injected error for these keys"
                for key in errors:
                    response.data_keys_with_error.add(key=key)
                await answers.put(response.SerializeToString())

    def _streaming_answer(self, keys, data_format):
        """One StreamingFetchFeatureValuesResponse, serialized, for these keys.

        Concatenating serialized messages is merging them (protobuf encoding
        rules), so each key's entry is serialized once and memoized.
        """
        parts = []
        for key in keys:
            memo_key = ("stream", int(data_format), key)
            encoded = self._encoded.get(memo_key)
            if encoded is None:
                row = self.data.get(key)
                entry = BetaFetchResponse()
                entry.data_key.key = key
                if row is not None:
                    entry.MergeFromString(self._online_entity(key, row, data_format))
                wrapper = StreamingFetchResponse()
                wrapper.data.append(entry)
                encoded = wrapper.SerializeToString()
                if row is not None:   # only existing keys: unknown ones must not grow the memo
                    self._encoded[memo_key] = encoded
            parts.append(encoded)
        return b"".join(parts)

    # -- in a background thread (tests) ---------------------------------------

    async def _start_server(self, host, port):
        # SO_REUSEPORT off: a port already in use is an error, not a silent share.
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._server.add_generic_rpc_handlers(self._handlers())
        bound = self._server.add_insecure_port(f"{host}:{port}")
        await self._server.start()
        self.host, self.port = host, bound
        return bound

    def start(self, host="127.0.0.1", port=0):
        """Serve from a background thread with its own event loop; port 0 picks a free one."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vertex-standin", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start_server(host, port), self._loop).result(30)
        return self

    def stop(self):
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._server.stop(grace=None), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
        self._loop = None

    # -- in the foreground (the command) --------------------------------------

    async def serve_until_signalled(self, host, port, announce):
        await self._start_server(host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        announce(self)
        await stop.wait()
        await self._server.stop(grace=None)


def run(args, parser):
    """Serve as ``args`` (the options of ``mab.cli.standin.add_arguments``)
    say until SIGINT or SIGTERM, printing the settings that use the stand-in
    to stdout first. Exits with status 2 through ``parser`` for a bad option
    or an unreadable file."""
    if args.keys_per_message < 0:
        parser.error("--keys-per-message must be >= 0")
    try:
        standin = VertexStandIn.from_csv(
            args.data, latency=args.latency_ms / 1000, fail_next=args.fail_first, hang=args.hang,
            max_ids=MAX_IDS if args.max_ids is None else args.max_ids,
            keys_per_message=args.keys_per_message, shuffle=args.shuffle, record_calls=False,
        )
    except (OSError, StopIteration) as exc:
        parser.exit(2, f"vertex stand-in: cannot read {args.data}: {getattr(exc, 'strerror', None) or 'empty file'}\n")
    # The table stays as loaded: out of the garbage collector's walks, whose
    # pauses over 100,000 items' rows (tens of ms) the client would see as
    # the service's latency.
    gc.collect()
    gc.freeze()

    def announce(standin):
        print(
            f"# mab store settings for the Vertex AI stand-in on {standin.address}, serving "
            f"{len(standin.data)} entities from {os.path.abspath(args.data)}.\n"
            f"# Save them to a file and run mab with MAB_CONFIG=<that file>.\n"
            f"{toml_table('stores.default', standin.store_settings(args.backend))}\n"
            f"{SERVING_LINE}",
            flush=True,
        )

    asyncio.run(standin.serve_until_signalled(args.host, args.port, announce))


def main(argv=None, prog="python -m mab.testing.vertex_standin"):
    """The command (``mab standin`` is the same), as a program of its own."""
    from mab.cli.standin import DESCRIPTION, add_arguments

    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv), parser)


if __name__ == "__main__":
    sys.exit(main())
