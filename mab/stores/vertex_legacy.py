"""Vertex AI Feature Store (Legacy): an entity type of a featurestore.

Reads with ``StreamingReadFeatureValues`` of
``FeaturestoreOnlineServingService``, through the library's gRPC stub (the
callable behind ``FeaturestoreOnlineServingServiceClient.streaming_read_feature_values``,
with the metadata the client method adds, but without google.api_core's
per-message wrapper): one call carries up to 100 entity ids (the service's
limit) and streams back a header, then one entity view per id. Messages are
read as raw protobuf messages (``.pb()``), never as proto-plus wrappers.
One message per entity is the service's own framing: the cache is the
remedy for its client CPU. A request's ids are split into chunks
of at most ``chunk_size`` (<= 100) and the chunks are read concurrently on
the worker's pool (see ``mab.stores._vertex``). A call that fails part-way
keeps the entities it already delivered; a retry asks only for the rest.

The legacy service answers an id it does not hold like an entity none of
whose features has a value (no error), so such an entity is ``missing``.

The legacy Featurestore is being retired (critical fixes only from
2026-05-17, shutdown 2027-02-17); the ``vertex`` backend reads the newer
Feature Online Store.

    [stores.default]
    backend = "vertex-legacy"
    project = "my-project"
    location = "us-central1"
    featurestore = "my_featurestore"
    entity_type = "items"
"""

from dataclasses import dataclass

from mab.stores._vertex import UnexpectedAnswer, VertexSettings, VertexStore, timeout_until
from mab.stores._vertex.store import GENERATE_TIME


@dataclass(frozen=True, kw_only=True)
class Settings(VertexSettings):
    featurestore: str
    entity_type: str
    backend: str = "vertex-legacy"

    RESOURCE_KEYS = ("featurestore", "entity_type")

    @property
    def resource(self):
        return (
            f"projects/{self.project}/locations/{self.location}"
            f"/featurestores/{self.featurestore}/entityTypes/{self.entity_type}"
        )


class Store(VertexStore):
    backend = "vertex-legacy"

    def __init__(self, settings, *, cache_dir=None, **kwargs):
        super().__init__(settings, cache_dir=cache_dir, **kwargs)
        self._request_class = None
        self._response_class = None
        self._rpc = None
        self._metadata = ()

    def _client_classes(self):
        import grpc
        from google.api_core import exceptions, gapic_v1
        from google.cloud.aiplatform_v1.services.featurestore_online_serving_service import (
            FeaturestoreOnlineServingServiceClient,
        )
        from google.cloud.aiplatform_v1.services.featurestore_online_serving_service.transports import (
            FeaturestoreOnlineServingServiceGrpcTransport,
        )
        from google.cloud.aiplatform_v1.services.featurestore_online_serving_service.transports.base import (
            DEFAULT_CLIENT_INFO,
        )
        from google.cloud.aiplatform_v1.types import featurestore_online_service

        self._rpc_error = grpc.RpcError
        self._from_grpc_error = exceptions.from_grpc_error
        self._metadata = (
            gapic_v1.routing_header.to_grpc_metadata((("entity_type", self.resource),)),
            DEFAULT_CLIENT_INFO.to_grpc_metadata(),
        )
        self._request_class = featurestore_online_service.StreamingReadFeatureValuesRequest
        self._response_class = featurestore_online_service.ReadFeatureValuesResponse
        return FeaturestoreOnlineServingServiceClient, FeaturestoreOnlineServingServiceGrpcTransport

    def load(self):
        super().load()
        self._rpc = self._client.transport.streaming_read_feature_values

    def _attempt(self, chunk, entity_ids, features, attempt_end):
        # Built as a raw protobuf message and wrapped: proto-plus's own
        # constructor costs tens of microseconds more per call.
        request_class = self._request_class
        request = request_class.wrap(
            request_class.pb()(
                entity_type=self.resource,
                entity_ids=entity_ids,
                feature_selector={"id_matcher": {"ids": [name for name in features if name != GENERATE_TIME]}},
            )
        )
        chunk.calls += 1
        # Retries are ours (VertexStore._run_chunk), bounded by the fetch's deadline.
        responses = self._rpc(request, timeout=timeout_until(attempt_end), metadata=self._metadata)
        wanted = set(entity_ids)
        positions = None
        try:
            for response in self._read(responses):
                # The raw message: field access without proto-plus's wrappers.
                message = self._response_class.pb(response)
                if message.HasField("header"):
                    positions = _positions(message.header, features)
                if message.HasField("entity_view"):
                    if positions is None:
                        raise UnexpectedAnswer("an entity view came before the header")
                    view = message.entity_view
                    if view.entity_id in wanted:
                        chunk.outcomes[view.entity_id] = self._entity_counts(view, positions, features)
        finally:
            responses.cancel()   # a no-op once the stream has ended; frees it when we stop early
        # An id the stream did not mention stays pending, so it fails: the
        # service did not say it lacks the entity.

    def _read(self, responses):
        """The stream's messages; its gRPC error as google.api_core's (retry decides on those)."""
        try:
            yield from responses
        except self._rpc_error as error:
            raise self._from_grpc_error(error) from None

    def _entity_counts(self, view, positions, features):
        data = view.data
        values = []
        for name, position in zip(features, positions):
            if position < 0 or position >= len(data):
                values.append(None)
                continue
            item = data[position]
            kind = item.WhichOneof("data")
            if kind == "value":
                values.append(item.value)
            elif kind is None:
                values.append(None)
            else:
                return self._invalid(view.entity_id, name, "a list of values")
        return self._counts(view.entity_id, features, values)


def _positions(header, features):
    """Where each requested feature is in the entity views' data (-1 for
    GENERATE_TIME, which is no feature)."""
    order = {descriptor.id: i for i, descriptor in enumerate(header.feature_descriptors)}
    order[GENERATE_TIME] = -1
    absent = [name for name in features if name not in order]
    if absent:
        raise UnexpectedAnswer(f"the answer's header has no feature(s) {', '.join(map(repr, absent))}")
    return [order[name] for name in features]
