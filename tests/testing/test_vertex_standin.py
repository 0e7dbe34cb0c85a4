"""The Vertex AI stand-in, through the real client library over real gRPC."""

import time

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import aiplatform_v1 as v1
from google.cloud.aiplatform_v1.services.feature_online_store_service.transports import (
    FeatureOnlineStoreServiceGrpcTransport,
)
from google.cloud.aiplatform_v1.services.featurestore_online_serving_service.transports import (
    FeaturestoreOnlineServingServiceGrpcTransport,
)

from mab.testing.vertex_standin import VertexStandIn, read_csv
from tests.vertex import StandInProcess

# Typed as written: ints become int64 values, decimals doubles, the rest strings.
CSV = """item_id,successes,failures,label
item-1,90,10,a
item-2,2.5,0.25,b
item-3,,7,
"""


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    path = tmp_path_factory.mktemp("standin") / "items.csv"
    path.write_text(CSV)
    standin = VertexStandIn.from_csv(path).start()
    yield standin
    standin.stop()


@pytest.fixture
def fresh(standin):
    standin.reset()
    return standin


@pytest.fixture(scope="module")
def legacy_client(standin):
    channel = grpc.insecure_channel(standin.address)
    yield v1.FeaturestoreOnlineServingServiceClient(transport=FeaturestoreOnlineServingServiceGrpcTransport(channel=channel))
    channel.close()


@pytest.fixture(scope="module")
def online_client(standin):
    channel = grpc.insecure_channel(standin.address)
    yield v1.FeatureOnlineStoreServiceClient(transport=FeatureOnlineStoreServiceGrpcTransport(channel=channel))
    channel.close()


def streaming_read(client, standin, ids, features=("successes", "failures"), entity_type=None, timeout=10):
    request = v1.StreamingReadFeatureValuesRequest(
        entity_type=entity_type or standin.entity_type_name,
        entity_ids=ids,
        feature_selector=v1.FeatureSelector(id_matcher=v1.IdMatcher(ids=list(features))),
    )
    return [type(r).pb(r) for r in client.streaming_read_feature_values(request=request, timeout=timeout)]


def fetch(client, standin, key, feature_view=None, data_format=v1.FeatureViewDataFormat.KEY_VALUE, timeout=10):
    request = v1.FetchFeatureValuesRequest(
        feature_view=feature_view or standin.feature_view_name,
        data_key=v1.FeatureViewDataKey(key=key),
        data_format=data_format,
    )
    response = client.fetch_feature_values(request=request, timeout=timeout)
    return type(response).pb(response)


def typed(value):
    kind = value.WhichOneof("value")
    return (kind, getattr(value, kind)) if kind else None


def test_reads_the_csv_typed(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text(CSV)
    features, data = read_csv(path)
    assert features == ["successes", "failures", "label"]
    assert data["item-1"] == {"successes": 90, "failures": 10, "label": "a"}
    assert data["item-2"] == {"successes": 2.5, "failures": 0.25, "label": "b"}
    assert data["item-3"] == {"successes": None, "failures": 7, "label": None}


# -- the legacy service ----------------------------------------------------------


def test_streaming_read_header_then_one_view_per_id(fresh, legacy_client):
    responses = streaming_read(legacy_client, fresh, ["item-2", "item-1", "nope", "item-3"])
    header = responses[0].header
    assert header.entity_type == fresh.entity_type_name
    assert [d.id for d in header.feature_descriptors] == ["successes", "failures"]
    views = [r.entity_view for r in responses[1:]]
    assert [v.entity_id for v in views] == ["item-2", "item-1", "nope", "item-3"]
    values = [[typed(d.value) if d.WhichOneof("data") else None for d in v.data] for v in views]
    assert values == [
        [("double_value", 2.5), ("double_value", 0.25)],
        [("int64_value", 90), ("int64_value", 10)],
        [None, None],   # an unknown entity: a view whose features have no value, as the real service answers
        [None, ("int64_value", 7)],
    ]
    assert fresh.calls[-1].method == "StreamingReadFeatureValues" and fresh.calls[-1].ids == 4


def test_streaming_read_feature_order_and_wildcard(fresh, legacy_client):
    responses = streaming_read(legacy_client, fresh, ["item-1"], features=("label", "successes"))
    assert [d.id for d in responses[0].header.feature_descriptors] == ["label", "successes"]
    assert [typed(d.value) for d in responses[1].entity_view.data] == [("string_value", "a"), ("int64_value", 90)]
    responses = streaming_read(legacy_client, fresh, ["item-1"], features=("*",))
    assert [d.id for d in responses[0].header.feature_descriptors] == ["successes", "failures", "label"]


def test_read_feature_values_one_entity(fresh, legacy_client):
    request = v1.ReadFeatureValuesRequest(
        entity_type=fresh.entity_type_name,
        entity_id="item-1",
        feature_selector=v1.FeatureSelector(id_matcher=v1.IdMatcher(ids=["failures"])),
    )
    response = type(r := legacy_client.read_feature_values(request=request, timeout=10)).pb(r)
    assert [d.id for d in response.header.feature_descriptors] == ["failures"]
    assert response.entity_view.entity_id == "item-1"
    assert typed(response.entity_view.data[0].value) == ("int64_value", 10)


def test_at_most_100_ids_per_call(fresh, legacy_client):
    ids = [f"id-{i}" for i in range(101)]
    with pytest.raises(exceptions.InvalidArgument, match="At most 100 entity ids"):
        streaming_read(legacy_client, fresh, ids)
    assert len(streaming_read(legacy_client, fresh, ids[:100])) == 101
    assert fresh.ids_per_call() == [101, 100]


def test_without_recording_calls_it_serves_and_keeps_nothing(fresh, legacy_client):
    # The command serves benchmarks this way: a record per call would grow
    # without bound.
    fresh.record_calls = False
    try:
        assert len(streaming_read(legacy_client, fresh, ["item-1", "item-2"])) == 3
    finally:
        fresh.record_calls = True
    assert fresh.calls == [] and fresh.in_flight == 0


def test_rejects_what_the_service_rejects(fresh, legacy_client):
    with pytest.raises(exceptions.NotFound, match="does not exist"):
        streaming_read(legacy_client, fresh, ["item-1"], entity_type=fresh.entity_type_name + "x")
    with pytest.raises(exceptions.InvalidArgument):
        streaming_read(legacy_client, fresh, ["item-1"], features=("successes", "clicks"))
    with pytest.raises(exceptions.InvalidArgument):
        streaming_read(legacy_client, fresh, [])


# -- the feature online store service --------------------------------------------


def test_fetch_feature_values_key_value(fresh, online_client):
    response = fetch(online_client, fresh, "item-2")
    pairs = [(p.name, typed(p.value) if p.WhichOneof("data") else None) for p in response.key_values.features]
    assert pairs == [("successes", ("double_value", 2.5)), ("failures", ("double_value", 0.25)), ("label", ("string_value", "b"))]
    response = fetch(online_client, fresh, "item-3")
    assert [typed(p.value) if p.WhichOneof("data") else None for p in response.key_values.features] == [
        None, ("int64_value", 7), None,
    ]
    assert [(c.method, c.ids) for c in fresh.calls] == [("FetchFeatureValues", 1)] * 2


def test_fetch_proto_struct(fresh, online_client):
    response = fetch(online_client, fresh, "item-1", data_format=v1.FeatureViewDataFormat.PROTO_STRUCT)
    fields = response.proto_struct.fields
    assert fields["successes"].number_value == 90.0 and fields["label"].string_value == "a"


def test_fetch_unknown_key_or_view_is_not_found(fresh, online_client):
    # As the real service answers: NOT_FOUND for a key the view lacks, and the
    # same for a view that does not exist.
    with pytest.raises(exceptions.NotFound, match="Requested entity was not found"):
        fetch(online_client, fresh, "nope")
    with pytest.raises(exceptions.NotFound, match="Requested entity was not found"):
        fetch(online_client, fresh, "item-1", feature_view=fresh.feature_view_name + "x")


# -- fault knobs -----------------------------------------------------------------


def test_fail_next(fresh, legacy_client, online_client):
    fresh.fail_next = 2
    with pytest.raises(exceptions.ServiceUnavailable):
        fetch(online_client, fresh, "item-1")
    with pytest.raises(exceptions.ServiceUnavailable):
        streaming_read(legacy_client, fresh, ["item-1"])
    assert fetch(online_client, fresh, "item-1").key_values.features[0].value.int64_value == 90
    assert len(fresh.calls) == 3 and fresh.fail_next == 0


def test_latency(fresh, online_client):
    fresh.latency = 0.1
    start = time.monotonic()
    fetch(online_client, fresh, "item-1")
    assert time.monotonic() - start >= 0.1


def test_hang_until_the_client_deadline(fresh, legacy_client, online_client):
    fresh.hang = True
    start = time.monotonic()
    with pytest.raises(exceptions.DeadlineExceeded):
        streaming_read(legacy_client, fresh, ["item-1"], timeout=0.2)
    with pytest.raises(exceptions.DeadlineExceeded):
        fetch(online_client, fresh, "item-1", timeout=0.2)
    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 2.0


def test_break_stream_after(fresh, legacy_client):
    fresh.break_stream_after = 1
    request = v1.StreamingReadFeatureValuesRequest(
        entity_type=fresh.entity_type_name,
        entity_ids=["item-1", "item-2", "item-3"],
        feature_selector=v1.FeatureSelector(id_matcher=v1.IdMatcher(ids=["successes"])),
    )
    received = []
    with pytest.raises(exceptions.ServiceUnavailable):
        for response in legacy_client.streaming_read_feature_values(request=request, timeout=10):
            received.append(response)
    assert len(received) == 2 and received[1].entity_view.entity_id == "item-1"
    assert len(streaming_read(legacy_client, fresh, ["item-1", "item-2"])) == 3, "one-shot"


def test_max_in_flight_counts_concurrent_calls(fresh, online_client):
    fresh.latency = 0.2
    rpc = online_client.transport.fetch_feature_values
    request = v1.FetchFeatureValuesRequest(feature_view=fresh.feature_view_name, data_key=v1.FeatureViewDataKey(key="item-1"))
    calls = [rpc.future(request, timeout=10) for _ in range(5)]
    assert all(call.result() for call in calls)
    assert fresh.max_in_flight == 5 and fresh.in_flight == 0


# -- the command -------------------------------------------------------------------


def test_command_prints_settings_serves_and_stops_on_sigterm(tmp_path):
    data = tmp_path / "items.csv"
    data.write_text(CSV)
    process = StandInProcess(
        tmp_path, data, "--backend", "vertex", "--latency-ms", "1", "--keys-per-message", "1", "--shuffle"
    ).start()
    try:
        settings = process.settings
        assert settings["backend"] == "vertex" and settings["plaintext"] is True
        assert "3 entities" in process.printed
        channel = grpc.insecure_channel(settings["api_endpoint"])
        client = v1.FeatureOnlineStoreServiceClient(transport=FeatureOnlineStoreServiceGrpcTransport(channel=channel))
        feature_view = (
            f"projects/{settings['project']}/locations/{settings['location']}"
            f"/featureOnlineStores/{settings['feature_online_store']}/featureViews/{settings['feature_view']}"
        )
        response = client.fetch_feature_values(
            request=v1.FetchFeatureValuesRequest(feature_view=feature_view, data_key=v1.FeatureViewDataKey(key="item-1")),
            timeout=10,
        )
        assert response.key_values.features[0].value.int64_value == 90
        channel.close()
        # The streaming knobs reached the server: one key per answer message.
        standin_view = type("View", (), {"feature_view_name": feature_view})
        from google.cloud import aiplatform_v1beta1 as v1beta1
        from google.cloud.aiplatform_v1beta1.services.feature_online_store_service.transports import (
            FeatureOnlineStoreServiceGrpcTransport as BetaTransport,
        )

        channel = grpc.insecure_channel(settings["api_endpoint"])
        beta = v1beta1.FeatureOnlineStoreServiceClient(transport=BetaTransport(channel=channel))
        responses = streaming_fetch(beta, standin_view, ["item-1", "item-2", "item-3"])
        assert [len(r.data) for r in responses] == [1, 1, 1]
        channel.close()
    finally:
        returncode = process.stop()
    assert returncode == 0, process.output()


def test_command_refuses_a_negative_keys_per_message(tmp_path):
    data = tmp_path / "items.csv"
    data.write_text(CSV)
    process = StandInProcess(tmp_path, data, "--keys-per-message", "-1")
    with pytest.raises(AssertionError, match="exited with 2"):
        process.start()


def test_command_names_a_missing_file(tmp_path):
    process = StandInProcess(tmp_path, tmp_path / "absent.csv")
    with pytest.raises(AssertionError, match="exited with 2"):
        process.start()
    assert "cannot read" in process.output() and process.stop() == 2


# -- StreamingFetchFeatureValues (v1beta1) ---------------------------------------------


@pytest.fixture(scope="module")
def beta_client(standin):
    from google.cloud import aiplatform_v1beta1 as v1beta1
    from google.cloud.aiplatform_v1beta1.services.feature_online_store_service.transports import (
        FeatureOnlineStoreServiceGrpcTransport as BetaTransport,
    )

    channel = grpc.insecure_channel(standin.address)
    yield v1beta1.FeatureOnlineStoreServiceClient(transport=BetaTransport(channel=channel))
    channel.close()


def streaming_fetch(client, standin, *key_lists, timeout=10):
    from google.cloud import aiplatform_v1beta1 as v1beta1

    requests = [
        v1beta1.StreamingFetchFeatureValuesRequest(
            feature_view=standin.feature_view_name,
            data_keys=[v1beta1.FeatureViewDataKey(key=key) for key in keys],
            data_format=v1beta1.FeatureViewDataFormat.KEY_VALUE,
        )
        for keys in key_lists
    ]
    return [type(r).pb(r) for r in client.streaming_fetch_feature_values(requests=iter(requests), timeout=timeout)]


def answered(responses):
    return [
        (entry.data_key.key, {pair.name: typed(pair.value) for pair in entry.key_values.features})
        for response in responses for entry in response.data
    ]


def test_streaming_fetch_answers_each_request_message_in_one_batch(fresh, beta_client):
    responses = streaming_fetch(beta_client, fresh, ["item-1", "gone"], ["item-3"])
    assert len(responses) == 2
    assert answered(responses) == [
        ("item-1", {"successes": ("int64_value", 90), "failures": ("int64_value", 10), "label": ("string_value", "a")}),
        ("gone", {}),   # a key the view does not hold: an entry without values
        ("item-3", {"successes": None, "failures": ("int64_value", 7), "label": None}),
    ]
    assert fresh.ids_per_call() == [2, 1] and fresh.streams == 1


def test_streaming_fetch_keys_per_message_shuffle_and_errors(fresh, beta_client):
    fresh.keys_per_message = 1
    fresh.shuffle = True
    fresh.error_keys = frozenset({"item-2"})
    keys = ["item-1", "item-2", "item-3", "gone", "also-gone"]
    responses = streaming_fetch(beta_client, fresh, keys)
    data = [r for r in responses if r.data]
    errors = [r for r in responses if r.data_keys_with_error]
    assert all(len(r.data) == 1 for r in data) and len(data) == 4
    assert sorted(key for key, _ in answered(responses)) == sorted(set(keys) - {"item-2"})
    assert len(errors) == 1 and [k.key for k in errors[0].data_keys_with_error] == ["item-2"]
    assert errors[0].status.code == 13
    # Shuffled: over a few streams the order is not always the request's.
    orders = {tuple(key for key, _ in answered(streaming_fetch(beta_client, fresh, keys))) for _ in range(10)}
    assert len(orders) > 1


def test_streaming_fetch_limits_and_faults(fresh, beta_client):
    with pytest.raises(exceptions.InvalidArgument, match="At most 100 data keys"):
        streaming_fetch(beta_client, fresh, [f"k{i}" for i in range(101)])
    fresh.fail_next = 1
    with pytest.raises(exceptions.ServiceUnavailable):
        streaming_fetch(beta_client, fresh, ["item-1"])
    fresh.break_stream_after = 1
    fresh.keys_per_message = 1
    with pytest.raises(exceptions.ServiceUnavailable, match="mid-stream"):
        streaming_fetch(beta_client, fresh, ["item-1", "item-2", "item-3"])
    fresh.reset()
    fresh.hang = True
    with pytest.raises(exceptions.DeadlineExceeded):
        streaming_fetch(beta_client, fresh, ["item-1"], timeout=0.2)
