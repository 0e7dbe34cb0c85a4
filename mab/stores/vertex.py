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
a streaming read make that count (``mab.stores._vertex.answers``); its numbers
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

import time
from dataclasses import dataclass

from mab.errors import ConfigError
from mab.stores._vertex import FAILED, MIN_ATTEMPT_SECONDS, MISSING, VertexSettings, VertexStore, timeout_until
from mab.stores._vertex.answers import FeatureViewAnswers
from mab.stores._vertex.store import GENERATE_TIME
from mab.stores._vertex.shared_stream import SharedStream

READ_APIS = ("streaming", "fetch")


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


class Store(FeatureViewAnswers, VertexStore):
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
