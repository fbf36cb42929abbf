"""The Helm chart, rendered by Helm's own engine (helm-python-sdk binds Helm's Go SDK; no helm binary or
cluster here), every built-in object validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields fail) of the oldest and newest supported versions, the prometheus-operator objects
validated against the subset of their CRD schemas the chart uses, and the objects checked against each other
(selectors, port names, volumes, probes)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's engine) is a test dependency")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "deploy" / "helm" / "segment-everything"
ADAPTER_VALUES = REPO_ROOT / "deploy" / "helm" / "prometheus-adapter-values.yaml"
# Chart.yaml's kubeVersion >=1.25, and the newest schema the installed kubernetes-validate ships
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
STARTUP_BUDGET_S = 30 * 60  # a first start builds the TensorRT engines

SCENARIOS = {
    "defaults (baked repository, shared engine cache, ServiceMonitor, HPA)": {},
    "volume repository, existing cache, PodMonitor, fixed replicas, GPU type": {
        "modelRepository": {
            "source": "volume",
            "volume": {"claimName": "mobilesamv2-models", "subPath": "gpu"},
        },
        "engineCache": {"existingClaim": "shared-engines"},
        "metrics": {
            "serviceMonitor": {"enabled": False},
            "podMonitor": {"enabled": True, "labels": {"team": "cv"}},
        },
        "autoscaling": {"enabled": False},
        "replicaCount": 2,
        "gpu": {"product": "NVIDIA-L4", "count": 2},
        "server": {"args": ["--log-verbose=1"], "env": [{"name": "OMP_NUM_THREADS", "value": "4"}]},
    },
    "object store repository, per-pod cache, LoadBalancer": {
        "modelRepository": {
            "source": "objectStore",
            "objectStore": {
                "uri": "s3://bucket/model_repository_gpu",
                "image": "amazon/aws-cli:2.17.0",
                "credentialsSecret": "s3-credentials",
            },
        },
        "engineCache": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "service": {"type": "LoadBalancer"},
        "metrics": {"serviceMonitor": {"labels": {"release": "kube-prometheus-stack"}}},
    },
    "existing admin key Secret, gRPC mutual TLS, clients from one namespace": {
        "security": {
            "adminKey": {"existingSecret": "ops-admin-key", "secretKey": "key", "header": "x-ops-key"},
            "grpcTls": {"enabled": True, "secretName": "grpc-cert", "mutual": True},
        },
        "networkPolicy": {
            "clients": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}]
        },
    },
    "management APIs open, no NetworkPolicy": {
        "security": {"adminKey": {"enabled": False}},
        "networkPolicy": {"enabled": False},
    },
}

# The parts of prometheus-operator's ServiceMonitor / PodMonitor CRDs (monitoring.coreos.com/v1) the chart
# writes; kubernetes-validate ships no schema for custom resources.
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
ENDPOINT = {
    "type": "object",
    "required": ["port"],
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "interval": {"type": "string", "pattern": DURATION},
    },
}
SELECTOR = {
    "type": "object",
    "required": ["matchLabels"],
    "additionalProperties": False,
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _monitor_schema(kind: str, endpoints_key: str) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", endpoints_key],
                "additionalProperties": False,
                "properties": {
                    "selector": SELECTOR,
                    endpoints_key: {"type": "array", "minItems": 1, "items": ENDPOINT},
                },
            },
        },
    }


CRD_SCHEMAS = {
    "ServiceMonitor": _monitor_schema("ServiceMonitor", "endpoints"),
    "PodMonitor": _monitor_schema("PodMonitor", "podMetricsEndpoints"),
}


def render(values: dict, name: str = "demo", namespace: str = "vision") -> list[dict]:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values, name=name, namespace=namespace)
    documents = []
    for path, text in sorted(files.items()):
        if path.endswith(".yaml"):
            documents += [d for d in yaml.safe_load_all(text) if d]
    return documents


def by_kind(documents: list[dict], kind: str) -> list[dict]:
    return [d for d in documents if d["kind"] == kind]


def one(documents: list[dict], kind: str) -> dict:
    [document] = by_kind(documents, kind)
    return document


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module", params=list(SCENARIOS), ids=list(SCENARIOS))
def scenario(request):
    values = SCENARIOS[request.param]
    return values, render(values)


def test_helm_lint_has_no_errors():
    report = helm.lint(str(CHART))
    assert report["errors"] == []
    assert all(m["severity"] <= 1 for m in report["messages"]), report["messages"]  # info only (icon)


def test_every_object_is_valid(scenario):
    _, documents = scenario
    kinds = sorted(d["kind"] for d in documents)
    assert {"Deployment", "Service"} <= set(kinds)
    for document in documents:
        name = f"{document['kind']}/{document['metadata']['name']}"
        if document["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.validate(document, CRD_SCHEMAS[document["kind"]])
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name} is invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_objects_fit_together(scenario):
    values, documents = scenario
    deployment = one(documents, "Deployment")
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    [container] = pod["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # the entrypoint's tritonserver defaults
    assert container_ports == {"http": 8000, "grpc": 8001, "metrics": 8002}

    services = {s["metadata"]["name"]: s for s in by_kind(documents, "Service")}
    assert set(services) == {
        "demo-segment-everything",
        "demo-segment-everything-headless",
        "demo-segment-everything-metrics",
    }
    for service in services.values():
        assert matches(service["spec"]["selector"], pod_labels)
        assert all(p["targetPort"] in container_ports for p in service["spec"]["ports"])
    for name in ("demo-segment-everything", "demo-segment-everything-headless"):
        assert {p["name"] for p in services[name]["spec"]["ports"]} == {"http", "grpc"}

    for monitor in by_kind(documents, "ServiceMonitor"):
        [target] = [
            s
            for s in services.values()
            if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert target["metadata"]["name"] == "demo-segment-everything-metrics"
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
            p["name"] for p in target["spec"]["ports"]
        }
    for monitor in by_kind(documents, "PodMonitor"):
        assert matches(monitor["spec"]["selector"]["matchLabels"], pod_labels)
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= set(container_ports)

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for c in [container, *pod["spec"].get("initContainers", [])]:
        assert {m["name"] for m in c["volumeMounts"]} <= set(volumes)
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert env["ENGINE_CACHE_DIR"] in mounts and env["RUNTIME_MODEL_REPOSITORY"].startswith("/tmp/")
    assert "/tmp" in mounts and container["securityContext"]["readOnlyRootFilesystem"] is True

    for claim in by_kind(documents, "PersistentVolumeClaim"):
        assert claim["metadata"]["name"] in {
            v.get("persistentVolumeClaim", {}).get("claimName") for v in volumes.values()
        }

    probes = {k: container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    startup = probes["startupProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= STARTUP_BUDGET_S
    check_inference_probes(probes["livenessProbe"], probes["readinessProbe"])

    resources = container["resources"]
    gpus = values.get("gpu", {}).get("count", 1)
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == gpus
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    hpas = by_kind(documents, "HorizontalPodAutoscaler")
    if values.get("autoscaling", {}).get("enabled", True):
        [hpa] = hpas
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment["metadata"]["name"],
        }
        [metric] = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "avg_time_queue_us"
        assert "replicas" not in deployment["spec"]  # the HPA owns the replica count
    else:
        assert hpas == [] and deployment["spec"]["replicas"] == values["replicaCount"]


def _probe_option(command: list[str], option: str) -> str | None:
    return next((c.split("=", 1)[1] for c in command if c.startswith(option + "=")), None)


def check_inference_probes(liveness: dict, readiness: dict) -> None:
    """Both run real inferences through the HTTP port within a deadline shorter than Kubernetes' timeout;
    liveness counts "overloaded" as alive (for a bounded number of probes), readiness does not; liveness gives
    a busy pod at least a minute before a restart."""
    for probe in (liveness, readiness):
        command = probe["exec"]["command"]
        assert command[:3] == ["python3", "-m", "mobilesamv2.runner.probe"]
        assert _probe_option(command, "--url") == "127.0.0.1:8000"
        assert float(_probe_option(command, "--timeout")) + 2 <= probe["timeoutSeconds"]
    live, ready = liveness["exec"]["command"], readiness["exec"]["command"]
    assert "--overloaded-ok" in live and "--overloaded-ok" not in ready
    assert int(_probe_option(live, "--max-overloaded")) > 0
    assert _probe_option(live, "--state-file").startswith("/tmp/")  # the writable emptyDir
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60
    assert readiness["periodSeconds"] < liveness["periodSeconds"]


def test_probe_settings():
    values = {"probes": {"inference": {"deadlineSeconds": 5, "interactive": False, "maxOverloaded": 3}}}
    [container] = one(render(values), "Deployment")["spec"]["template"]["spec"]["containers"]
    live, ready = (
        container["livenessProbe"]["exec"]["command"],
        container["readinessProbe"]["exec"]["command"],
    )
    assert "--timeout=5" in live and "--timeout=5" in ready
    assert "--no-interactive" in live and "--no-interactive" in ready
    assert "--max-overloaded=3" in live
    with pytest.raises(helm.HelmError, match="probes/inference"):
        render({"probes": {"inference": {"deadline": 5}}})


def test_model_repository_sources():
    volume = one(
        render(SCENARIOS["volume repository, existing cache, PodMonitor, fixed replicas, GPU type"]),
        "Deployment",
    )["spec"]["template"]["spec"]
    repo = next(v for v in volume["volumes"] if v["name"] == "model-repository")
    assert repo["persistentVolumeClaim"] == {"claimName": "mobilesamv2-models", "readOnly": True}
    mount = next(m for m in volume["containers"][0]["volumeMounts"] if m["name"] == "model-repository")
    assert mount == {
        "name": "model-repository",
        "mountPath": "/opt/mobilesamv2/model_repository",
        "readOnly": True,
        "subPath": "gpu",
    }
    assert volume["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    cache = next(v for v in volume["volumes"] if v["name"] == "engine-cache")
    assert cache["persistentVolumeClaim"]["claimName"] == "shared-engines"

    store = one(render(SCENARIOS["object store repository, per-pod cache, LoadBalancer"]), "Deployment")[
        "spec"
    ]["template"]["spec"]
    [init] = store["initContainers"]
    assert init["image"] == "amazon/aws-cli:2.17.0"
    assert {"name": "MODEL_REPOSITORY_URI", "value": "s3://bucket/model_repository_gpu"} in init["env"]
    assert init["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert {"emptyDir": {}, "name": "engine-cache"} in store["volumes"]

    baked = one(render({}), "Deployment")["spec"]["template"]["spec"]
    assert "initContainers" not in baked
    assert "model-repository" not in {v["name"] for v in baked["volumes"]}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"modelRepository": {"source": "nfs"}}, "modelRepository/source"),
        (
            {"modelRepository": {"source": "objectStore", "objectStore": {"uri": "s3://b/m"}}},
            "objectStore.image is required",
        ),
        ({"modelRepository": {"source": "volume"}}, "volume.claimName is required"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "must not exceed"),
        ({"gpu": {"count": 0}}, "gpu/count"),
        ({"autoscalling": {"enabled": False}}, "additional properties 'autoscalling'"),
        ({"security": {"adminKey": {"value": "short"}}}, "security/adminKey/value"),
        ({"security": {"adminKey": {"header": "X Key"}}}, "security/adminKey/header"),
        ({"security": {"grpcTls": {"enabled": True}}}, "security.grpcTls.secretName is required"),
        ({"networkPolicy": {"clients": {"namespaceSelector": {}}}}, "networkPolicy/clients"),
    ],
)
def test_bad_values_fail_at_render_time(values, message):
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


def test_prometheus_adapter_rule_serves_the_metric_the_hpa_reads():
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())
    [rule] = adapter["rules"]["custom"]
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert rule["name"]["as"] == chart_values["autoscaling"]["queueTimeMetric"]
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert "nv_inference_request_success" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


def _bytes(quantity: str) -> int:
    """A Kubernetes quantity with a binary or decimal suffix (Ki, Mi, Gi; k, M, G) in bytes."""
    number, suffix = re.fullmatch(r"(\d+)([KMG]i?|k)?", str(quantity)).groups()
    scale = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[suffix]
    return int(number) * scale


@pytest.mark.parametrize("shm_size", [None, "6Gi"])
def test_dev_shm_is_a_sized_memory_backed_volume(shm_size):
    """Triton's Python backend moves every tensor between the server and the model processes through
    /dev/shm; container runtimes give 64 MiB. The chart mounts a RAM-backed emptyDir, by default of what the
    GPU repository's pipeline may hold there (tests/deploy/test_memory.py)."""
    values = {"server": {"shmSize": shm_size}} if shm_size else {}
    pod = one(render(values), "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    size = volume["emptyDir"]["sizeLimit"]
    assert size == (shm_size or "4Gi")
    assert _bytes(size) >= 2**30
    # memory-backed: it counts against the container's memory limit, which must leave room for it
    assert _bytes(container["resources"]["limits"]["memory"]) >= 4 * _bytes(size)


# --- locked-down deployment ---------------------------------------------------------------------------------


def _pod(values: dict) -> tuple[dict, dict, list[str]]:
    documents = render(values)
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return pod, container, container["args"]


def _secret_volume(pod: dict, container: dict, name: str) -> tuple[dict, str]:
    [volume] = [v for v in pod["volumes"] if v["name"] == name]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == name]
    assert mount["readOnly"] is True
    return volume["secret"], mount["mountPath"]


def test_admin_key_secret_is_generated_and_handed_to_the_entrypoint():
    documents = render({})
    [secret] = by_kind(documents, "Secret")
    assert secret["metadata"]["name"] == "demo-segment-everything-admin-key" and secret["type"] == "Opaque"
    key = base64.b64decode(secret["data"]["admin-key"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", key)
    assert base64.b64decode(by_kind(render({}), "Secret")[0]["data"]["admin-key"]).decode() != key  # random
    pod, container, args = _pod({})
    volume, path = _secret_volume(pod, container, "admin-key")
    assert volume["secretName"] == secret["metadata"]["name"] and volume["defaultMode"] == 0o440
    assert volume["items"] == [{"key": "admin-key", "path": "admin-key"}]
    assert f"--admin-key-file={path}/admin-key" in args and "--admin-header=mobilesamv2-admin-key" in args
    assert not any(a.startswith("--grpc-tls") for a in args)
    assert pod["securityContext"]["fsGroup"] == 10001  # the group that may read the 0440 key file


def test_a_given_or_existing_admin_key():
    value = "given-admin-key-0123456789"
    [secret] = by_kind(render({"security": {"adminKey": {"value": value}}}), "Secret")
    assert base64.b64decode(secret["data"]["admin-key"]).decode() == value
    values = {
        "security": {"adminKey": {"existingSecret": "ops-admin-key", "secretKey": "key", "header": "x-k"}}
    }
    assert by_kind(render(values), "Secret") == []
    pod, container, args = _pod(values)
    volume, path = _secret_volume(pod, container, "admin-key")
    assert volume["secretName"] == "ops-admin-key" and volume["items"] == [{"key": "key", "path": "key"}]
    assert f"--admin-key-file={path}/key" in args and "--admin-header=x-k" in args


def test_management_apis_open_only_when_asked():
    values = {"security": {"adminKey": {"enabled": False}}}
    assert by_kind(render(values), "Secret") == []
    pod, _, args = _pod(values)
    assert args[0] == "--no-restrict-management-apis"
    assert "admin-key" not in {v["name"] for v in pod["volumes"]}


@pytest.mark.parametrize("mutual", [False, True])
def test_grpc_tls_from_a_tls_secret(mutual):
    values = {
        "security": {"grpcTls": {"enabled": True, "secretName": "grpc-cert", "mutual": mutual}},
        "server": {"args": ["--log-verbose=1"]},
    }
    pod, container, args = _pod(values)
    volume, path = _secret_volume(pod, container, "grpc-tls")
    assert volume["secretName"] == "grpc-cert"
    assert {i["key"] for i in volume["items"]} == {"tls.crt", "tls.key"} | ({"ca.crt"} if mutual else set())
    assert f"--grpc-tls-cert={path}/tls.crt" in args and f"--grpc-tls-key={path}/tls.key" in args
    assert (f"--grpc-tls-client-ca={path}/ca.crt" in args) is mutual
    assert args[-1] == "--log-verbose=1"  # tritonserver options after the entrypoint's


def test_network_policy_lets_in_only_the_service_ports():
    documents = render({})
    pod = one(documents, "Deployment")["spec"]["template"]
    [container] = pod["spec"]["containers"]
    policy = one(documents, "NetworkPolicy")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    serving, metrics = policy["spec"]["ingress"]
    container_ports = {p["name"] for p in container["ports"]}
    assert {p["port"] for p in serving["ports"]} == {"http", "grpc"} <= container_ports
    assert serving["from"] == [{"podSelector": {}}]  # this namespace only
    assert [p["port"] for p in metrics["ports"]] == ["metrics"]
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    clients = [{"namespaceSelector": {"matchLabels": {"team": "vision"}}, "podSelector": {}}]
    custom = one(render({"networkPolicy": {"clients": clients, "metrics": []}}), "NetworkPolicy")
    [only] = custom["spec"]["ingress"]
    assert only["from"] == clients
    assert by_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_client_side_balancing_pieces():
    """A headless Service (every ready pod's address under one name), gRPC connections closed at a maximum
    age (clients re-resolve and find new pods), a PodDisruptionBudget, and a grace period that covers the
    runner's drain before Triton's stop (the entrypoint's exit timeout, 30 s, + 5 s)."""
    documents = render({})
    services = {s["metadata"]["name"]: s for s in by_kind(documents, "Service")}
    headless = services["demo-segment-everything-headless"]["spec"]
    assert headless["clusterIP"] == "None"
    assert {(p["name"], p["port"]) for p in headless["ports"]} == {("http", 8000), ("grpc", 8001)}
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert "--grpc-max-connection-age=30000" in container["args"]
    assert one(documents, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert pod["terminationGracePeriodSeconds"] >= 30 + 5

    documents = render({"service": {"headless": False}, "server": {"grpcMaxConnectionAgeSeconds": 0}})
    assert "demo-segment-everything-headless" not in {
        s["metadata"]["name"] for s in by_kind(documents, "Service")
    }
    [container] = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert not any(a.startswith("--grpc-max-connection-age") for a in container["args"])
