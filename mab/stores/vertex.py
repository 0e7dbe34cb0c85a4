"""Vertex AI Feature Store: a feature view of a feature online store.

Reads with ``FetchFeatureValues`` of ``FeatureOnlineStoreService``, the call
behind ``FeatureOnlineStoreServiceClient.fetch_feature_values``.

Which call: ``google.cloud.aiplatform_v1`` (checked in google-cloud-aiplatform
2.7.0) offers, for serving, ``FetchFeatureValues`` with exactly one data key
per call; its other RPCs are vector search (``SearchNearestEntities``),
writes (``FeatureViewDirectWrite``) and ``GenerateFetchAccessToken``. The
batched ``StreamingFetchFeatureValues`` (many keys per message) exists only
in ``v1beta1``, which mab does not use. So the best v1 allows is many
single-key calls in flight at once: each chunk of at most ``chunk_size`` keys
is one task on the worker's pool that starts all its calls as gRPC futures on
the client's one channel (HTTP/2 multiplexes them on one connection), then
collects them; a retry asks again only for the keys that failed transiently.
Calling the client's blocking ``fetch_feature_values`` per key would need a
thread for every key in flight. The futures come from the client's transport
(``client.transport.fetch_feature_values``, the stub the client method calls)
and carry the metadata the client method adds (routing header and
x-goog-api-client).

Missing keys: the service answers NOT_FOUND ("Requested entity was not
found.") for a key the feature view does not hold, so that key is
``missing``. It answers the same for a feature view that does not exist:
a misnamed feature view makes every item missing, which /ready shows in
``fetches.missing``. Values are asked for in KEY_VALUE format, which keeps
int64 and double values typed (PROTO_STRUCT turns every number into a double).

    [stores.default]
    backend = "vertex"
    project = "my-project"
    location = "us-central1"
    feature_online_store = "my_store"
    feature_view = "items"
    # Optimized online serving has its own public endpoint:
    # api_endpoint = "<id>.us-central1-<project number>.featurestore.vertexai.goog"
"""

from dataclasses import dataclass

from mab.stores._vertex import FAILED, MISSING, VertexSettings, VertexStore, timeout_until


@dataclass(frozen=True, kw_only=True)
class Settings(VertexSettings):
    feature_online_store: str
    feature_view: str
    backend: str = "vertex"

    RESOURCE_KEYS = ("feature_online_store", "feature_view")

    @property
    def resource(self):
        return (
            f"projects/{self.project}/locations/{self.location}"
            f"/featureOnlineStores/{self.feature_online_store}/featureViews/{self.feature_view}"
        )


class Store(VertexStore):
    backend = "vertex"

    def __init__(self, settings, *, cache_dir=None):
        super().__init__(settings, cache_dir=cache_dir)
        self._rpc = None
        self._metadata = ()

    def _client_classes(self):
        import grpc
        from google.api_core import exceptions, gapic_v1
        from google.cloud.aiplatform_v1.services.feature_online_store_service import FeatureOnlineStoreServiceClient
        from google.cloud.aiplatform_v1.services.feature_online_store_service.transports import (
            FeatureOnlineStoreServiceGrpcTransport,
        )
        from google.cloud.aiplatform_v1.services.feature_online_store_service.transports.base import (
            DEFAULT_CLIENT_INFO,
        )
        from google.cloud.aiplatform_v1.types import feature_online_store_service as types

        self._grpc = grpc
        self._from_grpc_error = exceptions.from_grpc_error
        self._transient_codes = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        self._request_class = types.FetchFeatureValuesRequest
        self._data_key = types.FeatureViewDataKey.pb()
        self._response_class = types.FetchFeatureValuesResponse
        self._key_value = int(types.FeatureViewDataFormat.KEY_VALUE)
        self._metadata = (
            gapic_v1.routing_header.to_grpc_metadata((("feature_view", self.resource),)),
            DEFAULT_CLIENT_INFO.to_grpc_metadata(),
        )
        return FeatureOnlineStoreServiceClient, FeatureOnlineStoreServiceGrpcTransport

    def load(self):
        super().load()
        # A unary gRPC callable: .future() starts a call without blocking a thread.
        self._rpc = self._client.transport.fetch_feature_values

    def _attempt(self, chunk, entity_ids, features, attempt_end):
        grpc = self._grpc
        rpc, metadata = self._rpc, self._metadata
        wrap, request = self._request_class.wrap, self._request_class.pb()
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
            chunk.outcomes[entity_id] = self._key_counts(entity_id, features, self._response_class.pb(response))
        if transient is not None:
            raise self._from_grpc_error(transient)

    def _key_counts(self, entity_id, features, message):
        answer_format = message.WhichOneof("format")
        if answer_format not in (None, "key_values"):
            return self._invalid(entity_id, features[0], f"an answer in {answer_format} format, not key_values")
        pairs = {pair.name: pair for pair in message.key_values.features}
        values = []
        for name in features:
            pair = pairs.get(name)
            if pair is None:
                # Not a silent zero: the entity has no value for it, and a
                # feature the view never has is a configuration error, so say so.
                self._warn(
                    "the feature view returned no feature %r for key %r (it returned %s); "
                    "is the model's feature name right?",
                    name, entity_id, ", ".join(map(repr, pairs)) or "none",
                )
            values.append(pair.value if pair is not None and pair.WhichOneof("data") == "value" else None)
        return self._counts(entity_id, features, values)
