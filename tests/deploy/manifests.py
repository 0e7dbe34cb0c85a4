"""deploy/k8s read as data, for the tests of deploy/: every YAML document,
the Deployment's container, and its env as the kubelet would set it."""

import glob
import math
import os
from decimal import Decimal

import yaml

from tests.deploy.image import ROOT

K8S = os.path.join(ROOT, "deploy", "k8s")
CONTAINER = "mab"


def documents():
    """(relative path, object) for every YAML document under deploy/k8s."""
    found = []
    for path in sorted(glob.glob(os.path.join(K8S, "**", "*.yaml"), recursive=True)):
        with open(path) as f:
            for document in yaml.safe_load_all(f):
                if document:
                    found.append((os.path.relpath(path, K8S), document))
    return found


def one(kind, name=None, path=None):
    matches = [
        doc for rel, doc in documents()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name) and (path is None or rel == path)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def deployment():
    return one("Deployment", "mab")


def pod_spec():
    return deployment()["spec"]["template"]["spec"]


def container():
    (found,) = [c for c in pod_spec()["containers"] if c["name"] == CONTAINER]
    return found


def cpu_millicores(quantity):
    """A Kubernetes CPU quantity ("4", "3500m", "0.5") in millicores."""
    text = str(quantity)
    if text.endswith("m"):
        return Decimal(text[:-1])
    return Decimal(text) * 1000


def resolved_env():
    """The container's env as the kubelet sets it: plain values, and
    resourceFieldRef values computed as the kubelet does (the resource
    divided by the divisor, rounded up)."""
    spec = container()
    env = {}
    for variable in spec.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        ref = variable["valueFrom"]["resourceFieldRef"]
        assert ref["resource"] == "limits.cpu", f"{variable['name']}: only limits.cpu is resolved here"
        limit = cpu_millicores(spec["resources"]["limits"]["cpu"])
        divisor = cpu_millicores(ref.get("divisor", "1"))
        env[variable["name"]] = str(math.ceil(limit / divisor))
    return env


def configmap_for(path):
    """The ConfigMap and key mounted at `path` in the container."""
    directory, key = os.path.split(path)
    (mount,) = [m for m in container()["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in pod_spec()["volumes"] if v["name"] == mount["name"]]
    configmap = one("ConfigMap", volume["configMap"]["name"])
    assert key in configmap["data"], f"{path}: no key {key} in ConfigMap {configmap['metadata']['name']}"
    return configmap, key
