"""deploy/k8s: every manifest valid for Kubernetes, the ScaledObjects for KEDA's CRD, and true to the project.

Offline: the Kubernetes schemas come with `kubernetes-validate` (strict: an
unknown field is an error, as `kubectl apply` makes it), KEDA's with this
repository (tests/data, vendored from KEDA's release). The cross-checks catch
drift between the manifests and the code: probe paths the app routes, variable
names and values the settings accept, the grace periods the shutdown needs,
the metrics the autoscaling query reads.
"""

from __future__ import annotations

import copy
import re
import runpy
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml

from common.settings import Settings, SettingsError
from devtools.credentials import flower_basic_auth
from tests.helpers import ROOT, StubWorkers, make_client
from webapp.metrics import FleetCollector

K8S = ROOT / "deploy" / "k8s"
KEDA_SCHEMA = ROOT / "tests" / "data" / "keda-scaledobject-v2.20.2.schema.yaml"
SECRET_EXAMPLE = "secret.example.yaml"
# The oldest Kubernetes still commonly run, and the newest the package knows.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
# Variables that are not fields of common.settings.Settings but are read by the
# image's own files: gunicorn.conf.py and flowerconfig.py (HOST), Flower (FLOWER_BASIC_AUTH).
OTHER_VARIABLES = {"HOST", "FLOWER_BASIC_AUTH"}
SETTINGS_VARIABLES = {name.upper() for name in Settings.__dataclass_fields__}


def _manifest_files():
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents():
    """(file name, document) for every object in deploy/k8s, the Secret's example included."""
    return [(path.name, doc) for path in _manifest_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


DOCUMENTS = _documents()
K8S_DOCUMENTS = [(name, doc) for name, doc in DOCUMENTS if not doc["apiVersion"].startswith("keda.sh/")]
SCALED_OBJECTS = [doc for _, doc in DOCUMENTS if doc["kind"] == "ScaledObject"]


def _of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in DOCUMENTS if doc["kind"] == kind}


def _pod_specs() -> dict[str, dict]:
    """Workload name -> its pod spec (Deployments, the StatefulSet, the Job)."""
    return {doc["metadata"]["name"]: doc["spec"]["template"]["spec"]
            for _, doc in DOCUMENTS if doc["kind"] in ("Deployment", "StatefulSet", "Job")}


def _containers():
    return [(name, container) for name, spec in _pod_specs().items()
            for container in spec.get("initContainers", []) + spec["containers"]]


def _literal_env(container: dict) -> dict[str, str]:
    return {var["name"]: var["value"] for var in container.get("env", []) if "value" in var}


def _strict(schema):
    """The schema as the API server applies it: unknown fields are errors (kubectl's field validation).

    A structural CRD schema prunes fields it does not name, and `kubectl
    apply` (validate=strict) refuses them; jsonschema accepts them unless
    every object says additionalProperties: false.
    """
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def keda_validator():
    schema = _strict(yaml.safe_load(KEDA_SCHEMA.read_text()))
    return jsonschema.Draft7Validator(schema)


def _keda_errors(validator, scaled_object: dict) -> list[str]:
    """Schema errors, and the CRD's one CEL rule (jsonschema does not read x-kubernetes-validations)."""
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(scaled_object)]
    spec = scaled_object.get("spec", {})
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        errors.append("minReplicaCount must be less than or equal to maxReplicaCount")
    return errors


def test_kustomization_applies_every_manifest_but_the_secret_example():
    """`kubectl apply -k` takes every manifest file, none twice, and never the Secret's placeholders."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(p.name for p in _manifest_files() if p.name != SECRET_EXAMPLE)
    assert all(doc["metadata"]["namespace"] == kustomization["namespace"]
               for _, doc in DOCUMENTS if doc["kind"] != "Namespace")


def test_kustomize_builds_the_listed_objects():
    """kustomize (kubectl's own, where kubectl is installed) builds exactly the listed objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the schema tests do not need it)")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout) if d)
    expected = sorted((d["kind"], d["metadata"]["name"]) for n, d in DOCUMENTS if n != SECRET_EXAMPLE)
    assert built == expected


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name,doc", K8S_DOCUMENTS, ids=[f"{n}:{d['kind']}/{d['metadata']['name']}"
                                                         for n, d in K8S_DOCUMENTS])
def test_manifest_is_valid_kubernetes(name, doc, version):
    """Each object passes its Kubernetes schema, strictly (no unknown or misspelt field)."""
    kubernetes_validate.validate(doc, version, strict=True)


def test_a_broken_manifest_is_rejected():
    """The check can fail: a misspelt field, a wrong type and a container without a name are each refused."""
    deployment = _of_kind("Deployment")["webapp"]
    breakages = [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(livenessProbes={}),
        lambda d: d["spec"].update(replicas="two"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
    ]
    for breakage in breakages:
        broken = copy.deepcopy(deployment)
        breakage(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("scaled_object", SCALED_OBJECTS, ids=[s["metadata"]["name"] for s in SCALED_OBJECTS])
def test_scaled_object_is_valid_for_kedas_crd(keda_validator, scaled_object):
    """Each ScaledObject passes KEDA's CRD schema (v2.20.2) and its min <= max rule."""
    assert _keda_errors(keda_validator, scaled_object) == []


def test_a_broken_scaled_object_is_rejected(keda_validator):
    """The KEDA check can fail: a misspelt field, a trigger without a type, min above max."""
    scaled_object = SCALED_OBJECTS[0]
    breakages = [
        lambda s: s["spec"].update(minReplicas=1),
        lambda s: s["spec"]["triggers"][0].pop("type"),
        lambda s: s["spec"].update(minReplicaCount=9, maxReplicaCount=2),
        lambda s: s["spec"]["triggers"][0]["metadata"].update(threshold=64),  # metadata values are strings
    ]
    for breakage in breakages:
        broken = copy.deepcopy(scaled_object)
        breakage(broken)
        assert _keda_errors(keda_validator, broken), breakage


def test_each_model_queue_scales_its_own_worker_deployment():
    """A ScaledObject per model: it targets a worker Deployment that preloads that model, one ScaledObject each."""
    deployments = _of_kind("Deployment")
    targets = [s["spec"]["scaleTargetRef"]["name"] for s in SCALED_OBJECTS]
    assert len(targets) == len(set(targets)), "KEDA drives a Deployment from one ScaledObject only"
    for scaled_object in SCALED_OBJECTS:
        target = deployments[scaled_object["spec"]["scaleTargetRef"]["name"]]
        [worker] = target["spec"]["template"]["spec"]["containers"]
        preloaded = _literal_env(worker)["PRELOAD_MODELS"].split(",")
        models = set()
        for trigger in scaled_object["spec"]["triggers"]:
            meta = trigger["metadata"]
            if trigger["type"] == "prometheus":
                models |= set(re.findall(r'model_id="([^"]+)"', meta["query"]))
            elif trigger["type"] == "redis":
                models.add(meta["listName"].removeprefix("infer."))
                assert meta["listName"].startswith("infer.")
        assert len(models) == 1 and models <= set(preloaded), (scaled_object["metadata"]["name"], models)


def test_scaling_query_reads_waiting_and_in_flight_as_the_webapp_exports_them():
    """The Prometheus query's metrics and label exist in /metrics, and it counts waiting plus in-flight jobs."""
    workers = StubWorkers([{"name": "w", "models": {"minilm": {}}, "in_hand": {"minilm": 3}}])

    class Depths:
        def queue_depths(self, models):
            return dict.fromkeys(models, 5)

    closed = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    exported = {family.name: {tuple(s.labels.items()) for s in family.samples}
                for family in FleetCollector(closed, workers, Depths()).collect()}
    for scaled_object in SCALED_OBJECTS:
        [query] = [t["metadata"]["query"] for t in scaled_object["spec"]["triggers"] if t["type"] == "prometheus"]
        used = set(re.findall(r"(atf_\w+)\{model_id=", query))
        assert used == {"atf_queue_depth", "atf_jobs_in_flight"}, query
        for metric in used:
            assert (("model_id", "minilm"),) in exported[metric], metric
        # every replica reports the fleet's figures: taken once, not summed over replicas
        assert "sum(" not in query and query.count("max(") == 2


def test_redis_fallback_trigger_reaches_the_redis_service():
    """The Redis trigger's address is the redis Service, by the name KEDA's namespace resolves."""
    service = _of_kind("Service")["redis"]
    expected = f"redis.{service['metadata']['namespace']}.svc.cluster.local:{service['spec']['ports'][0]['port']}"
    for scaled_object in SCALED_OBJECTS:
        for trigger in scaled_object["spec"]["triggers"]:
            if trigger["type"] == "redis":
                assert trigger["metadata"]["address"] == expected


def test_probe_paths_are_routes_of_the_app(model_dir):  # noqa: F811
    """Every httpGet probe names a GET route the webapp serves."""
    adapter = make_client(model_dir).application.url_map.bind("localhost")
    paths = [probe["httpGet"]["path"] for _, c in _containers()
             for probe in (c.get("livenessProbe"), c.get("readinessProbe"), c.get("startupProbe"))
             if probe and "httpGet" in probe]
    assert "/health/live" in paths and "/health/ready" in paths
    for path in paths:
        adapter.match(path, method="GET")  # raises NotFound when the app has no such route


def test_environment_names_and_values_are_settings_the_project_reads():
    """Every variable a pod gets is a setting (or read by the image's own files), and its value is accepted."""
    config = _of_kind("ConfigMap")["atf-settings"]["data"]
    secret_keys = set(_of_kind("Secret")["atf-secrets"]["stringData"])
    for name in set(config) | secret_keys:
        assert name in SETTINGS_VARIABLES | OTHER_VARIABLES, name
    for workload, container in _containers():
        assert [ref["configMapRef"]["name"] for ref in container.get("envFrom", [])] in ([], ["atf-settings"])
        for var in container.get("env", []):
            assert var["name"] in SETTINGS_VARIABLES | OTHER_VARIABLES, (workload, var["name"])
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "atf-secrets" and ref["key"] == var["name"] and ref["key"] in secret_keys
        if container.get("envFrom"):
            Settings.from_env({**config, **_literal_env(container)})  # raises SettingsError on a bad value


def test_secret_placeholders_stop_the_start():
    """A Secret applied with its placeholders is refused: the webapp and Flower do not start with a known password."""
    placeholders = _of_kind("Secret")["atf-secrets"]["stringData"]
    for name in ("ADMIN_TOKEN", "API_TOKENS"):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: placeholders[name]})
    with pytest.raises(ValueError, match="FLOWER_BASIC_AUTH"):
        flower_basic_auth({"FLOWER_BASIC_AUTH": placeholders["FLOWER_BASIC_AUTH"]})


def test_webapp_grace_period_covers_the_drain(monkeypatch, tmp_path):
    """The pod outlives gunicorn's graceful_timeout (30 s + DRAIN_DELAY_S), and the delay covers the probe."""
    pod = _pod_specs()["webapp"]
    [container] = pod["containers"]
    delay = _literal_env(container)["DRAIN_DELAY_S"]
    monkeypatch.setenv("DRAIN_DELAY_S", delay)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    graceful_timeout = runpy.run_path(str(ROOT / "gunicorn.conf.py"))["graceful_timeout"]
    assert pod["terminationGracePeriodSeconds"] > graceful_timeout
    readiness = container["readinessProbe"]
    assert float(delay) >= readiness["periodSeconds"] * readiness["failureThreshold"]


def test_workers_one_gpu_each_and_time_to_finish_a_batch():
    """A GPU worker asks for one GPU and uses it as cuda:0; every worker has at least compose's time to finish."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker-cpu"]
    compose_grace = int(compose["stop_grace_period"].removesuffix("s"))
    gpu_workers = 0
    for name, spec in _pod_specs().items():
        [container] = spec["containers"]
        if container.get("command", [])[:4] != ["celery", "-A", "tasks", "worker"]:
            continue
        assert spec["terminationGracePeriodSeconds"] >= compose_grace, name
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        if gpus is not None:
            gpu_workers += 1
            assert gpus == 1 and _literal_env(container)["WORKER_DEVICE"] == "cuda:0", name
            assert spec["nodeSelector"] and spec["tolerations"], name
    assert gpu_workers >= 1


def test_pods_run_unprivileged_with_resources():
    """Restricted pods: non-root (the image's uid 10001, Redis's own), no escalation, no capabilities, sized."""
    uid = int(re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    for name, spec in _pod_specs().items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in spec["containers"]:
            if "async-transformer-framework" in container["image"]:
                assert pod["runAsUser"] == uid, name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name
            for mount in container.get("volumeMounts", []):
                if mount["mountPath"] == "/models" and name != "build-demo-models":
                    assert mount["readOnly"] is True, name


def test_redis_persists_like_compose():
    """Redis keeps compose's persistence (append-only, fsync every second) on a claimed volume."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]["command"]
    statefulset = _of_kind("StatefulSet")["redis"]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    for flag in ("--appendonly", "--appendfsync", "--save"):
        assert args[args.index(flag) + 1] == compose[compose.index(flag) + 1], flag
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
