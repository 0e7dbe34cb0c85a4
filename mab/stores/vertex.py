"""Vertex AI Feature Store: a feature view of a feature online store.

Two ways to read, chosen by ``read_api``:

``"streaming"`` (the default): ``StreamingFetchFeatureValues`` of
``FeatureOnlineStoreService`` in ``google.cloud.aiplatform_v1beta1`` (the
only API version that has it in google-cloud-aiplatform 2.7). It is a
bidirectional stream: each request message carries many data keys (here at
most ``chunk_size``), and the service answers with messages holding batches
(``data[]``) of ``FetchFeatureValuesResponse``, each naming its
``data_key``. Answers may come out of order and are not one-to-one with the
request messages, so they are matched by key. Python's gRPC costs about
100-130 us of client CPU per streamed message here, so the number of
messages, not the number of keys, decides the cost: a 400-key request is 4
request messages and, from a service that answers each with one batch, 4
response messages, against 400 calls through ``FetchFeatureValues``.

One long-lived stream per worker, shared by its request threads
(``mab.stores._vertex.shared_stream``), rather than one stream per request.
Measured with ``scripts/profile_vertex_client.py`` (docs/benchmarks.md), a
400-key read costs less client CPU on the shared stream (1.30-1.34 against
1.59-2.18 ms on a busy machine; see the docs for quiet figures): opening a
stream costs a call object, metadata, a thread that gRPC starts to consume
the request iterator, and a cancel, for every request, while the shared
stream's price (one reader thread that decodes every answer and wakes the
waiting request once, not once per message) is smaller. What sharing costs
in robustness is bounded: a stream that breaks is replaced and every
request on it asks again for its outstanding keys, within its own
deadline; a request whose answer is late asks again on the same stream
unless the stream delivered nothing at all meanwhile (then it is hung, and
replaced), so one slow answer does not restart every request in flight.

How each key ends:

- an entry in ``data[]`` whose features all have values: found;
- an entry with none of the requested features set (the service holds no
  such entity): missing;
- a key in ``data_keys_with_error`` of a message, or named in a message
  whose ``status`` is not OK: failed, never missing (the message's status
  says why; it is logged);
- no answer when the stream ends or the deadline passes: failed.

``"fetch"``: ``FetchFeatureValues`` of the v1 API, one key per call. Each
chunk of at most ``chunk_size`` keys is one task on the worker's pool that
starts all its calls as gRPC futures on the client's one channel (HTTP/2
multiplexes them on one connection), then collects them; a retry asks again
only for the keys that failed transiently. The service answers NOT_FOUND
("Requested entity was not found.") for a key the feature view does not
hold, so that key is missing. It answers the same for a feature view that
does not exist: with this API a misnamed feature view makes every item
missing, which /ready shows in ``fetches.missing``.

Streaming reads ask for PROTO_STRUCT answers and per-key reads for
KEY_VALUE ones. A struct is read by feature name, at about half the upb
field accesses of KEY_VALUE's list of pairs, and the hundreds of entries of
a streaming read make that count (``Store._decode_entries``); its numbers
are doubles, as the store's columns are. A model with a half-life needs
each value's ``generate_time``, which only KEY_VALUE carries: its streaming
reads ask for KEY_VALUE. Both decode the raw protobuf messages
(``.pb()`` of the library's proto-plus types, on the upb runtime) rather
than proto-plus wrappers; the library's message classes and gRPC stubs stay
the source of truth for the wire format.

    [stores.default]
    backend = "vertex"
    project = "my-project"
    location = "us-central1"
    feature_online_store = "my_store"
    feature_view = "items"
    # read_api = "streaming"     # or "fetch"
    # Optimized online serving has its own public endpoint:
    # api_endpoint = "<id>.us-central1-<project number>.featurestore.vertexai.goog"
"""

import math
import time
from dataclasses import dataclass

from mab.errors import ConfigError
from mab.stores._vertex import FAILED, MIN_ATTEMPT_SECONDS, MISSING, VertexSettings, VertexStore, timeout_until
from mab.stores._vertex._answers import struct_counts
from mab.stores._vertex.store import GENERATE_TIME
from mab.stores._vertex.shared_stream import SharedStream

READ_APIS = ("streaming", "fetch")
INFINITY = math.inf


@dataclass(frozen=True, kw_only=True)
class Settings(VertexSettings):
    feature_online_store: str
    feature_view: str
    read_api: str = "streaming"
    backend: str = "vertex"

    RESOURCE_KEYS = ("feature_online_store", "feature_view")

    @property
    def resource(self):
        return (
            f"projects/{self.project}/locations/{self.location}"
            f"/featureOnlineStores/{self.feature_online_store}/featureViews/{self.feature_view}"
        )

    @classmethod
    def _backend_settings(cls, table, where):
        read_api = table.pop("read_api", cls.read_api)
        if read_api not in READ_APIS:
            raise ConfigError(f"{where}.read_api must be one of {', '.join(map(repr, READ_APIS))}, got {read_api!r}")
        return {"read_api": read_api}


class Store(VertexStore):
    backend = "vertex"

    def __init__(self, settings, *, cache_dir=None, **kwargs):
        super().__init__(settings, cache_dir=cache_dir, **kwargs)
        self._streaming = settings.read_api == "streaming"
        self._rpc = None
        self._metadata = ()
        self._stream = None
        self._positions = {}   # features -> {name: index}

    def _client_classes(self):
        import grpc
        from google.api_core import exceptions, gapic_v1

        if self._streaming:
            from google.cloud.aiplatform_v1beta1.services.feature_online_store_service import (
                FeatureOnlineStoreServiceClient,
                transports,
            )
            from google.cloud.aiplatform_v1beta1.services.feature_online_store_service.transports.base import (
                DEFAULT_CLIENT_INFO,
            )
            from google.cloud.aiplatform_v1beta1.types import feature_online_store_service as types
        else:
            from google.cloud.aiplatform_v1.services.feature_online_store_service import (
                FeatureOnlineStoreServiceClient,
                transports,
            )
            from google.cloud.aiplatform_v1.services.feature_online_store_service.transports.base import (
                DEFAULT_CLIENT_INFO,
            )
            from google.cloud.aiplatform_v1.types import feature_online_store_service as types

        self._grpc = grpc
        self._exceptions = exceptions
        self._from_grpc_error = exceptions.from_grpc_error
        self._transient_codes = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        self._types = types
        self._data_key = types.FeatureViewDataKey.pb()
        self._key_value = int(types.FeatureViewDataFormat.KEY_VALUE)
        self._proto_struct = int(types.FeatureViewDataFormat.PROTO_STRUCT)
        self._metadata = (
            gapic_v1.routing_header.to_grpc_metadata((("feature_view", self.resource),)),
            DEFAULT_CLIENT_INFO.to_grpc_metadata(),
        )
        return FeatureOnlineStoreServiceClient, transports.FeatureOnlineStoreServiceGrpcTransport

    def load(self):
        super().load()
        transport = self._client.transport
        # The library's stubs: (de)serialization by its message classes; the
        # raw message is wrapped (cheap) on the way out and unwrapped on the
        # way in, so proto-plus never builds its field wrappers.
        self._rpc = transport.streaming_fetch_feature_values if self._streaming else transport.fetch_feature_values

    # -- streaming reads -------------------------------------------------------------

    def _fetch_remote(self, entity_ids, features, end):
        if not self._streaming:
            return super()._fetch_remote(entity_ids, features, end)
        outcomes = {}
        pending = entity_ids
        calls = 0
        errors = []
        delays = self._backoff()
        while True:
            remaining = end - time.monotonic()
            if remaining < MIN_ATTEMPT_SECONDS:
                errors.append(f"deadline of {self.settings.deadline_ms:g} ms reached")
                break
            calls += 1
            error = self._stream_attempt(pending, features, outcomes, time.monotonic() + min(self._attempt_timeout, remaining))
            if error is None:   # every key answered
                pending = ()
                break
            pending = [entity_id for entity_id in pending if entity_id not in outcomes]
            errors.append(str(error))
            if not pending:
                break
            transient = getattr(error, "grpc_status_code", None) in self._transient_codes or getattr(error, "transient", False)
            if not transient or delays is None:
                break
            self._count_retry(error)
            pause = min(next(delays), end - time.monotonic() - MIN_ATTEMPT_SECONDS)
            if pause > 0:
                time.sleep(pause)
        for entity_id in pending:
            outcomes[entity_id] = FAILED
        self._record(len(entity_ids), calls, outcomes, errors)
        return outcomes

    def _backoff(self):
        """Pauses between attempts (jittered, growing), or None without retries."""
        if not self.settings.retry:
            return None
        from google.api_core.retry import exponential_sleep_generator

        s = self.settings
        return exponential_sleep_generator(s.retry_initial_ms / 1000, s.retry_max_ms / 1000, s.retry_multiplier)

    def _requests(self, entity_ids, features):
        """The request messages for ``entity_ids``: PROTO_STRUCT answers,
        or KEY_VALUE ones when ``features`` asks for GENERATE_TIME (see
        ``_decode_entries``)."""
        request = self._types.StreamingFetchFeatureValuesRequest
        raw, wrap = request.pb(), request.wrap
        data_format = self._key_value if GENERATE_TIME in features else self._proto_struct
        size, feature_view = self.settings.chunk_size, self.resource
        messages = []
        for i in range(0, len(entity_ids), size):
            message = raw(feature_view=feature_view, data_format=data_format)
            # add() then a field set: a fifth less than add(key=key), which
            # passes a keyword, and a third of building FeatureViewDataKey
            # messages to pass in.
            add = message.data_keys.add
            for key in entity_ids[i : i + size]:
                add().key = key
            messages.append(wrap(message))
        return messages

    def _stream_attempt(self, entity_ids, features, outcomes, attempt_end):
        """One attempt at ``entity_ids`` on the worker's shared stream:
        records an outcome per key answered in ``outcomes``; returns the
        error that ended the stream before every key was answered, or None
        when every key was."""
        answered, error = self._shared_stream().fetch(
            entity_ids, features, self._requests(entity_ids, features), max(0.0, attempt_end - time.monotonic())
        )
        outcomes.update(answered)
        return error

    def _shared_stream(self):
        stream = self._stream
        if stream is None or stream.error is not None:
            with self._lock:
                stream = self._stream
                if stream is None or stream.error is not None:
                    stream = self._stream = SharedStream(
                        lambda requests: self._rpc(requests, metadata=self._metadata),
                        self._read_answer, self._entry_outcome, FAILED,
                        self._from_grpc_error, self._grpc.RpcError, f"mab-stream-{self.settings.name}",
                    )
        return stream

    def close(self):
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        super().close()

    def _read_answer(self, response, features):
        """Read one StreamingFetchFeatureValuesResponse: ``(keys, outcomes,
        entries, failed_keys)``, see ``SharedStream``; keys in
        ``data_keys_with_error``, and every key of a message whose status is
        not OK, failed."""
        message = self._types.StreamingFetchFeatureValuesResponse.pb(response)
        status = message.status
        with_error = message.data_keys_with_error
        failed_keys = [data_key.key for data_key in with_error] if len(with_error) else []
        if status.code != 0:
            failed_keys += [entry.data_key.key for entry in message.data]
            self._warn(
                "the feature view answered status %d (%s) for %d keys; they count as failed",
                status.code, status.message, len(failed_keys),
            )
            return [], [], [], failed_keys
        if failed_keys:
            self._warn("the feature view answered %d keys with errors; they count as failed", len(failed_keys))
        return (*self._decode_entries(message.data, features), failed_keys)

    def _entry_outcome(self, key, features, entry):
        """Counts, MISSING or FAILED from one raw FetchFeatureValuesResponse of a stream."""
        return self._decode_entries((entry,), features)[1][0]

    def _decode_entries(self, entries, features):
        """``(keys, outcomes, entries)``, three lists in the order of
        ``entries``, raw FetchFeatureValuesResponse messages of a stream
        read in PROTO_STRUCT format (``_requests`` asks for it, unless
        ``features`` asks for GENERATE_TIME); an outcome is a tuple of
        counts, MISSING or FAILED. Lists side by side, not a tuple per
        entry, so that the stream hands a message's answers to the fetch
        waiting for them in a few C-level calls.

        Why PROTO_STRUCT here: a upb field access costs ~0.1-0.3 us (every
        submessage read makes a wrapper object), and a struct's map is read
        by feature name, where KEY_VALUE's list of pairs must be walked and
        every pair's name read: 0.8 against 1.5 us per entry of bare access
        (``scripts/profile_vertex_client.py``). A struct's numbers are
        doubles, which is what the store's columns hold anyway, and a value
        of another kind (a string, a bool) is still told apart and refused.

        The common case in one loop, with no call per entry (for two
        features, the compiled ``_answers.struct_counts``): a positive
        ``number_value`` can only be a number (``kind`` is a oneof, and any
        other kind reads as 0.0), so only a zero needs ``WhichOneof``;
        anything else (absent or null values, other kinds, NaN or infinite
        numbers) takes the careful path, ``_struct_counts``.
        """
        if len(features) == 2 and GENERATE_TIME not in features:
            # A Beta model's two counts, in one compiled loop.
            keys, outcomes, entries, careful = struct_counts(entries, *features)
            for i in careful:
                outcomes[i] = self._struct_counts(keys[i], features, entries[i])   # missing, or something to say
            return keys, outcomes, entries
        entries = list(entries)
        keys = [entry.data_key.key for entry in entries]
        if GENERATE_TIME in features:
            # Decay needs each count's generate_time, which only KEY_VALUE
            # answers carry (a struct's values have no metadata): _requests
            # asked for KEY_VALUE.
            return keys, [self._key_value_outcome(key, features, entry) for key, entry in zip(keys, entries)], entries
        outcomes = []
        append = outcomes.append
        for key, entry in zip(keys, entries):
            get = entry.proto_struct.fields.get
            counts = []
            for name in features:
                value = get(name)
                if value is None:
                    break
                number = value.number_value
                if not 0 < number < INFINITY and (number != 0 or value.WhichOneof("kind") != "number_value"):
                    break
                counts.append(number)
            else:
                append(tuple(counts))
                continue
            append(self._struct_counts(key, features, entry))   # missing, or something to say
        return keys, outcomes, entries

    def _struct_counts(self, entity_id, features, entry):
        """Counts, MISSING or FAILED from a FetchFeatureValuesResponse in
        PROTO_STRUCT format (or in KEY_VALUE format: another fetch of the
        same key on the shared stream, for a model with a half-life, may
        have asked for that)."""
        answer_format = entry.WhichOneof("format")
        if answer_format == "key_values":
            return self._key_value_outcome(entity_id, features, entry)
        if answer_format not in (None, "proto_struct"):
            return self._invalid(entity_id, features[0], f"an answer in {answer_format} format, not proto_struct")
        if GENERATE_TIME in features:
            return self._invalid(entity_id, features[0], "an answer in proto_struct format, which has no "
                                 "generate_time for the model's half_life_seconds")
        fields = entry.proto_struct.fields
        counts = []
        for name in features:
            value = fields.get(name)
            if value is None and len(fields):
                self._warn_unknown_feature(entity_id, name, list(fields))
            kind = None if value is None else value.WhichOneof("kind")
            if kind == "number_value":
                number = value.number_value
                if not (number >= 0 and math.isfinite(number)):
                    return self._invalid(entity_id, name, f"{number!r}, not a count (finite and >= 0)")
            elif kind in (None, "null_value"):
                number = None
            else:
                return self._invalid(entity_id, name, f"a {kind.removesuffix('_value')} value")
            counts.append(number)
        return self._complete(entity_id, features, counts)

    def _key_value_outcome(self, key, features, entry):
        """Counts, MISSING or FAILED from one raw FetchFeatureValuesResponse
        of a stream in KEY_VALUE format, with GENERATE_TIME (the oldest
        ``generate_time`` of the counts) when ``features`` asks for it.

        The common case inline (every feature a count): each field access of
        a upb message costs ~0.1-0.2 us, and there are a few per feature of
        each of hundreds of keys; anything else takes the careful path.
        """
        position = self._positions.get(features)
        if position is None:
            position = self._positions[features] = {
                name: i for i, name in enumerate(features) if name != GENERATE_TIME
            }
        counts = [None] * len(features)
        # With a half-life: the oldest generate_time of the counts.
        timed = len(position) < len(features)
        oldest = INFINITY
        for pair in entry.key_values.features:
            i = position.get(pair.name)
            if i is None:
                continue
            value = pair.value
            kind = value.WhichOneof("value")
            if kind == "int64_value":
                number = value.int64_value
                if number < 0:
                    break
            elif kind == "double_value":
                number = value.double_value
                if not 0 <= number < INFINITY:   # NaN is not
                    break
            else:
                break
            counts[i] = number
            if timed:
                stamp = value.metadata.generate_time
                seconds = stamp.seconds + stamp.nanos * 1e-9
                if not seconds > 0:
                    break
                oldest = min(oldest, seconds)
        else:
            if timed:
                counts[features.index(GENERATE_TIME)] = oldest
            if None not in counts:
                return tuple(counts)
        return self._key_counts(key, features, entry)   # missing, or something to check and say

    # -- per-key reads (read_api = "fetch") ----------------------------------------------

    def _attempt(self, chunk, entity_ids, features, attempt_end):
        grpc = self._grpc
        rpc, metadata = self._rpc, self._metadata
        request_class = self._types.FetchFeatureValuesRequest
        wrap, request = request_class.wrap, request_class.pb()
        unwrap = self._types.FetchFeatureValuesResponse.pb
        data_key, key_value, feature_view = self._data_key, self._key_value, self.resource
        calls = [
            (
                entity_id,
                rpc.future(
                    wrap(request(feature_view=feature_view, data_key=data_key(key=entity_id), data_format=key_value)),
                    timeout=timeout_until(attempt_end),
                    metadata=metadata,
                ),
            )
            for entity_id in entity_ids
        ]
        chunk.calls += len(calls)
        transient = None
        for entity_id, call in calls:
            try:
                response = call.result()
            except grpc.FutureCancelledError:
                chunk.outcomes[entity_id] = FAILED       # the store is closing
                chunk.error = "call cancelled"
                continue
            except grpc.RpcError as error:
                code = error.code()
                if code == grpc.StatusCode.NOT_FOUND:
                    chunk.outcomes[entity_id] = MISSING  # the service's answer for a key it does not hold
                elif code in self._transient_codes:
                    transient = transient or error       # stays pending: the next attempt asks again
                else:
                    chunk.outcomes[entity_id] = FAILED
                    chunk.error = self._from_grpc_error(error)
                continue
            chunk.outcomes[entity_id] = self._key_counts(entity_id, features, unwrap(response))
        if transient is not None:
            raise self._from_grpc_error(transient)

    # -- values ------------------------------------------------------------------------

    def _key_counts(self, entity_id, features, message):
        """Counts, MISSING or FAILED from one raw FetchFeatureValuesResponse."""
        answer_format = message.WhichOneof("format")
        if answer_format not in (None, "key_values"):
            return self._invalid(entity_id, features[0], f"an answer in {answer_format} format, not key_values")
        pairs = {pair.name: pair for pair in message.key_values.features}
        values = []
        for name in features:
            if name == GENERATE_TIME:
                values.append(None)         # read from the counts' metadata by _counts
                continue
            pair = pairs.get(name)
            if pair is None and pairs:
                self._warn_unknown_feature(entity_id, name, list(pairs))
            values.append(pair.value if pair is not None and pair.WhichOneof("data") == "value" else None)
        return self._counts(entity_id, features, values)

    def _warn_unknown_feature(self, entity_id, name, returned):
        # Not a silent zero: the entity has no value for it, and a feature
        # the view never has is a configuration error, so say so.
        self._warn(
            "the feature view returned no feature %r for key %r (it returned %s); is the model's feature name right?",
            name, entity_id, ", ".join(map(repr, returned)),
        )
