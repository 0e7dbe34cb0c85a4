"""Tests of deploy/k8s (there is no mab.deploy package): the Kubernetes
manifests, validated against the Kubernetes schemas of two releases, and the
invariants that tie them to the image, gunicorn.conf.py and the app.

Schemas: kubernetes-validate ships the OpenAPI schemas of each Kubernetes
release and validates offline; strict mode rejects unknown fields, so a
misspelt key fails instead of being dropped by the API server. Objects that
are not Kubernetes API objects of those schemas are listed in NOT_IN_SCHEMAS
with the test that checks them instead; any other object must validate.

gunicorn's settings are read the way gunicorn reads them: gunicorn's own
WSGIApplication loads gunicorn.conf.py and GUNICORN_CMD_ARGS in a separate
process whose environment is the image's ENV plus the Deployment's env.
"""

import glob
import json
import math
import os
import subprocess
import sys

import falcon.testing
import kubernetes_validate
import pytest
import yaml

from mab.config import load_config
from mab.web import create_app
from tests.deploy import image
from tests.deploy.manifests import (
    CONTAINER, K8S, configmap_for, container, cpu_millicores, deployment, documents, one, pod_spec, resolved_env,
)

# Kubernetes releases to validate against: 1.29, the oldest the manifests
# are written for (the preStop hook avoids the `sleep` action for it), and 1.31.
VERSIONS = ("1.29", "1.31")
# (apiVersion, kind) -> why kubernetes-validate has no schema for it, and what checks it.
NOT_IN_SCHEMAS = {
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
        "kustomize's own file, not an API object: test_kustomization_lists_every_object",
    ("keda.sh/v1alpha1", "ScaledObject"):
        "a KEDA custom resource (no CRD schemas shipped): test_keda_alternative_matches_the_hpa",
}


@pytest.fixture
def mab_toml(tmp_path):
    """The ConfigMap's mab.toml, written where a test process can read it."""
    configmap, key = configmap_for(resolved_env()["MAB_CONFIG"])
    path = tmp_path / key
    path.write_text(configmap["data"][key])
    return path


GUNICORN_SETTINGS = """
import json, sys
from gunicorn.app.wsgiapp import WSGIApplication
sys.argv = json.loads(sys.argv[1])
cfg = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]", prog="gunicorn").cfg
print(json.dumps({name: getattr(cfg, name) for name in
    ("bind", "workers", "threads", "graceful_timeout", "timeout", "keepalive", "worker_tmp_dir", "worker_class_str")}))
"""


@pytest.fixture
def gunicorn_settings(mab_toml):
    """gunicorn's settings in the pod: the image's command, ENV and the
    Deployment's env (MAB_CONFIG pointing at the ConfigMap's mab.toml)."""
    env = {"PATH": os.environ["PATH"], **image.image_env(), **resolved_env(), "MAB_CONFIG": str(mab_toml)}
    argv = [part.replace("/app/", image.ROOT + "/") for part in image.image_cmd()]
    result = subprocess.run(
        [sys.executable, "-c", GUNICORN_SETTINGS, json.dumps(argv)],
        env=env, cwd=image.ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- schemas -------------------------------------------------------------------


def test_the_kubernetes_validate_schemas_are_there():
    available = {kubernetes_validate.utils.major_minor(v) for v in kubernetes_validate.utils.all_versions()}
    assert set(VERSIONS) <= available, f"kubernetes-validate {kubernetes_validate.__version__} has {sorted(available)}"


def kubernetes_objects():
    """(id, object) of every document that must validate: all but NOT_IN_SCHEMAS."""
    return [
        pytest.param(document, id=f"{path}:{document['kind']}/{document['metadata']['name']}")
        for path, document in documents()
        if (document["apiVersion"], document["kind"]) not in NOT_IN_SCHEMAS
    ]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("document", kubernetes_objects())
def test_manifest_validates(document, version):
    validated = kubernetes_validate.validate(document, version, strict=True)
    assert validated == version


def test_the_unvalidated_list_is_current():
    """Every entry of NOT_IN_SCHEMAS is still in deploy/k8s (any other object
    is validated by test_manifest_validates, where a kind without a schema
    fails with SchemaNotFoundError rather than passing)."""
    found = {(doc["apiVersion"], doc["kind"]) for _, doc in documents()}
    assert set(NOT_IN_SCHEMAS) <= found, f"NOT_IN_SCHEMAS lists objects that are gone: {set(NOT_IN_SCHEMAS) - found}"


def test_a_schema_violation_is_caught():
    """The validation is real: a misspelt field fails in strict mode."""
    broken = json.loads(json.dumps(deployment()))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_kustomization_lists_every_object():
    kustomization = one("Kustomization")
    top_level = {
        os.path.basename(path) for path in glob.glob(os.path.join(K8S, "*.yaml"))
    } - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == top_level
    (entry,) = kustomization["images"]
    assert entry["name"] == container()["image"], "kustomize's image override names the Deployment's image"


# -- probes --------------------------------------------------------------------


def probe(name):
    spec = container()[name]
    http = spec["httpGet"]
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    port = ports.get(http["port"], http["port"])
    assert port in ports.values(), f"{name} probes a port the container does not declare"
    return http["path"]


def test_liveness_and_startup_probe_health_readiness_probes_ready():
    assert probe("livenessProbe") == "/health"
    assert probe("startupProbe") == "/health"
    assert probe("readinessProbe") == "/ready"


def test_every_probe_path_is_in_the_openapi_document():
    with open(os.path.join(image.ROOT, "mab", "openapi.json")) as f:
        paths = json.load(f)["paths"]
    for name in ("livenessProbe", "readinessProbe", "startupProbe"):
        path = probe(name)
        assert "get" in paths.get(path, {}), f"{name}: GET {path} is not in mab/openapi.json"


class UnreachableStore:
    """A store that is down: every use is recorded and fails."""

    def __init__(self):
        self.touched = []

    def __getattr__(self, name):
        self.touched.append(name)

        def fail(*args, **kwargs):
            raise ConnectionError(f"store down ({name})")

        return fail


def test_liveness_never_touches_a_store(mab_toml):
    """What the liveness probe asks for answers 200 while the store is down,
    without touching it; readiness tells the truth instead."""
    config = load_config({"MAB_CONFIG": str(mab_toml)})
    store = UnreachableStore()
    app = create_app(config, stores={name: store for name in config.stores}, load="no")
    with pytest.raises(ConnectionError):
        app.service.load()
    client = falcon.testing.TestClient(app)
    store.touched.clear()
    response = client.simulate_get(probe("livenessProbe"))
    assert response.status_code == 200 and response.json == {"status": "ok"}
    assert store.touched == [], f"the liveness path used the store: {store.touched}"
    response = client.simulate_get(probe("readinessProbe"))
    assert response.status_code == 503 and response.json["status"] == "failed"


# -- shutdown ------------------------------------------------------------------


def prestop_pause():
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return float(command[1])


def test_the_grace_period_outlasts_the_pause_and_gunicorns_graceful_timeout(gunicorn_settings):
    grace = pod_spec()["terminationGracePeriodSeconds"]
    pause = prestop_pause()
    assert pause >= 5, "long enough for endpoints to be withdrawn"
    assert grace > pause + gunicorn_settings["graceful_timeout"], (
        f"terminationGracePeriodSeconds {grace} <= preStop {pause} + graceful_timeout "
        f"{gunicorn_settings['graceful_timeout']}"
    )


# -- workers, ports ------------------------------------------------------------


def test_web_concurrency_follows_the_cpu_limit(gunicorn_settings):
    (variable,) = [v for v in container()["env"] if v["name"] == "WEB_CONCURRENCY"]
    ref = variable["valueFrom"]["resourceFieldRef"]
    assert ref["resource"] == "limits.cpu" and ref.get("containerName", CONTAINER) == CONTAINER
    limit = cpu_millicores(container()["resources"]["limits"]["cpu"])
    assert gunicorn_settings["workers"] == math.ceil(limit / 1000) == int(resolved_env()["WEB_CONCURRENCY"])
    # With a Vertex store, gunicorn.conf.py gives each worker 16 request threads.
    assert gunicorn_settings["threads"] == 16


def test_cpu_requests_equal_limits_in_whole_cpus():
    resources = container()["resources"]
    assert resources["requests"] == resources["limits"], "Guaranteed QoS"
    assert cpu_millicores(resources["limits"]["cpu"]) % 1000 == 0, "whole CPUs, one worker each"


def test_container_port_service_target_and_gunicorn_bind_agree(gunicorn_settings):
    (port,) = container()["ports"]
    service = one("Service", "mab")
    (service_port,) = service["spec"]["ports"]
    target = service_port["targetPort"]
    assert target in (port["name"], port["containerPort"])
    assert gunicorn_settings["bind"] == [f"0.0.0.0:{port['containerPort']}"]
    assert image.runtime_stage().one("EXPOSE").value.strip() == str(port["containerPort"])
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])


def test_selectors_match_the_pods():
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    selectors = [
        deployment()["spec"]["selector"]["matchLabels"],
        one("Service", "mab")["spec"]["selector"],
        one("PodDisruptionBudget", "mab")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()


# -- security and the filesystem -----------------------------------------------


def test_pod_runs_as_the_images_user_with_nothing_extra():
    uid, gid = image.image_user()
    pod = pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid and pod["runAsGroup"] == gid
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security.get("privileged", False) is False
    assert pod_spec()["automountServiceAccountToken"] is False
    assert pod_spec()["enableServiceLinks"] is False


def test_every_path_the_service_writes_is_a_writable_volume():
    mounts = {m["mountPath"]: m for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    env = {**image.image_env(), **resolved_env()}
    for key in ("MAB_CACHE_DIR", "PROMETHEUS_MULTIPROC_DIR", "XDG_RUNTIME_DIR"):
        path = env[key]
        covering = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
        assert covering, f"{key}={path} is on the read-only root filesystem"
        mount = mounts[max(covering, key=len)]
        assert not mount.get("readOnly", False) and "emptyDir" in volumes[mount["name"]], f"{key}: not writable"


def test_the_configmap_is_a_valid_vertex_configuration_with_the_cache_on(mab_toml):
    config = load_config({"MAB_CONFIG": str(mab_toml)})
    backends = {settings.backend for settings in config.stores.values()}
    assert backends == {"vertex"}
    for settings in config.stores.values():
        assert settings.cache_ttl_seconds > 0
        assert not settings.plaintext and settings.api_endpoint is None


def test_workload_identity():
    account = one("ServiceAccount", pod_spec()["serviceAccountName"])
    google_account = account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    assert google_account.endswith(".iam.gserviceaccount.com")
    assert pod_spec()["nodeSelector"]["iam.gke.io/gke-metadata-server-enabled"] == "true"


# -- autoscaling ---------------------------------------------------------------

IN_FLIGHT = "mab_http_requests_in_flight"


def hpa():
    return one("HorizontalPodAutoscaler", "mab")


def test_the_hpa_owns_the_replica_count():
    target = hpa()["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "mab")
    assert "replicas" not in deployment()["spec"], "a replica count in the Deployment fights the HPA"
    rollout = deployment()["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxUnavailable"] == 0


def test_the_hpa_scales_on_cpu_and_in_flight_requests_per_pod():
    metrics = {metric["type"]: metric for metric in hpa()["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Resource"]["resource"]["target"]["type"] == "Utilization"
    pods = metrics["Pods"]["pods"]
    assert pods["metric"]["name"] == IN_FLIGHT
    assert pods["target"]["type"] == "AverageValue" and float(pods["target"]["averageValue"]) > 0


def test_the_hpa_behaves_like_cortex():
    """Cortex's defaults: downscale stabilisation 5 min, upscale 1 min,
    at most x1.5 up and x0.75 down per step."""
    behavior = hpa()["spec"]["behavior"]
    down, up = behavior["scaleDown"], behavior["scaleUp"]
    assert down["stabilizationWindowSeconds"] == 300
    assert up["stabilizationWindowSeconds"] == 60
    down_percent = [p for p in down["policies"] if p["type"] == "Percent"]
    up_percent = [p for p in up["policies"] if p["type"] == "Percent"]
    assert down_percent and all(p["value"] <= 25 for p in down_percent), "x0.75 per step at most"
    assert up_percent and all(p["value"] <= 50 for p in up_percent), "x1.5 per step at most"
    # A Pods policy may allow more than the percentage (selectPolicy Max), but only a few pods.
    assert all(p["value"] <= 4 for p in up["policies"] if p["type"] == "Pods")
    assert all(p["type"] == "Percent" for p in down["policies"])


def test_prometheus_adapter_serves_the_hpas_metric():
    configmap = one("ConfigMap", path=os.path.join("autoscaling", "prometheus-adapter.yaml"))
    rules = yaml.safe_load(configmap["data"]["config.yaml"])["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == IN_FLIGHT]
    assert rule["seriesQuery"].startswith(IN_FLIGHT + "{")
    overrides = rule["resources"]["overrides"]
    assert overrides["pod"] == {"resource": "pod"} and overrides["namespace"] == {"resource": "namespace"}
    # Summed over a pod's workers, grouped by pod.
    assert rule["metricsQuery"].startswith("sum(") and "by (<<.GroupBy>>)" in rule["metricsQuery"]


def test_keda_alternative_matches_the_hpa():
    scaled = one("ScaledObject", "mab")
    spec, hpa_spec = scaled["spec"], hpa()["spec"]
    assert spec["scaleTargetRef"] == hpa_spec["scaleTargetRef"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa_spec["minReplicas"], hpa_spec["maxReplicas"])
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa_spec["behavior"]
    triggers = {trigger["type"]: trigger for trigger in spec["triggers"]}
    metrics = {metric["type"]: metric for metric in hpa_spec["metrics"]}
    cpu_target = metrics["Resource"]["resource"]["target"]["averageUtilization"]
    assert triggers["cpu"]["metadata"]["value"] == str(cpu_target)
    prometheus = triggers["prometheus"]
    assert IN_FLIGHT in prometheus["metadata"]["query"]
    assert prometheus["metricType"] == "AverageValue"
    assert prometheus["metadata"]["threshold"] == metrics["Pods"]["pods"]["target"]["averageValue"]


def test_the_budget_allows_drains_and_keeps_most_pods():
    budget = one("PodDisruptionBudget", "mab")["spec"]
    assert budget["maxUnavailable"] == "10%"
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert hpa()["spec"]["minReplicas"] >= 2, "a budget over one pod blocks every drain"
