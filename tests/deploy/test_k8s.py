"""deploy/k8s: every overlay renders with kubectl kustomize, validates against the Kubernetes schemas,
and describes a replica that the service really is (probes, ports, threads, drain, regions, rollout file)."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from service.settings import ServiceSettings
from tests.deploy_tools import K8S, OVERLAYS, env_values, one, rendered, serving_container

KUBERNETES_VERSION = "1.30"  # the oldest release the manifests target
# Custom resources of the Prometheus Operator: no schema ships with kubernetes-validate. The
# PrometheusRule's rules are checked by promtool (test_deploy_alerts.py), the ServiceMonitor below.
CUSTOM_RESOURCES = {"ServiceMonitor", "PrometheusRule"}
# Settings of the contract that the rollout work adds to ServiceSettings; the manifests set them already.
NOT_YET_SETTINGS = {"SERVING_ADMIN_TOKEN"}

every_overlay = pytest.mark.parametrize("overlay", ["base", *OVERLAYS])


@every_overlay
def test_overlay_renders_every_kind_the_deployment_needs(overlay):
    kinds = sorted(doc["kind"] for doc in rendered(overlay))

    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    assert {doc["metadata"].get("namespace") for doc in rendered(overlay)} == {"fastprod"}


@every_overlay
def test_overlay_passes_strict_schema_validation(overlay):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for doc in rendered(overlay):
        if doc["kind"] in CUSTOM_RESOURCES:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_schema_validation_catches_a_misspelt_field():
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    deployment = copy.deepcopy(one(rendered("base"), "Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")

    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@every_overlay
def test_probes_and_scrape_path_are_endpoints_the_service_serves(overlay, client):
    docs = rendered(overlay)
    container = serving_container(docs)
    paths = {container[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    monitor = one(docs, "ServiceMonitor")
    paths |= {endpoint["path"] for endpoint in monitor["spec"]["endpoints"]}

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for path in sorted(paths):
        assert client.get(path).status_code == 200, path


@every_overlay
def test_ports_line_up_from_the_service_to_the_process(overlay):
    docs = rendered(overlay)
    container = serving_container(docs)
    (port,) = container["ports"]
    service_port = one(docs, "Service")["spec"]["ports"][0]
    monitor_ports = {e["port"] for e in one(docs, "ServiceMonitor")["spec"]["endpoints"]}

    assert int(env_values(container)["SERVING_PORT"]) == port["containerPort"]
    assert service_port["targetPort"] == port["name"]
    assert monitor_ports == {service_port["name"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]


@every_overlay
def test_termination_grace_outlasts_prestop_and_the_drain_window(overlay):
    docs = rendered(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = serving_container(docs)
    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "sleep"
    drain = env_values(container)["SERVING_GRACEFUL_SHUTDOWN_S"]
    drain_s = ServiceSettings(graceful_shutdown_s=drain).graceful_shutdown_s

    assert pod["terminationGracePeriodSeconds"] > float(prestop[1]) + drain_s


@every_overlay
def test_replica_is_locked_down(overlay):
    docs = rendered(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    security = serving_container(docs)["securityContext"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's numeric user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


@every_overlay
def test_every_path_the_service_writes_is_a_volume(overlay):
    docs = rendered(overlay)
    mounts = {m["mountPath"]: m for m in serving_container(docs)["volumeMounts"]}

    assert not mounts["/tmp"].get("readOnly", False)
    assert not mounts["/var/lib/fastprod"].get("readOnly", False)
    assert env_values(serving_container(docs))["SERVING_STATE_PATH"].startswith("/var/lib/fastprod/")
    assert mounts["/etc/fastprod/rollout"]["readOnly"] is True
    assert "subPath" not in mounts["/etc/fastprod/rollout"], "a subPath mount never sees ConfigMap edits"


@every_overlay
def test_onnx_runtime_threads_follow_the_cpu_limit(overlay):
    container = serving_container(rendered(overlay))
    env = {e["name"]: e for e in container["env"]}

    for name in ("SERVING_INTRA_OP_THREADS", "SERVING_PREPROCESS_THREADS"):
        field = env[name]["valueFrom"]["resourceFieldRef"]
        assert field == {"containerName": "serving", "resource": "limits.cpu", "divisor": "1"}
    assert container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"]


@every_overlay
def test_every_setting_in_the_manifest_is_one_the_service_reads(overlay):
    container = serving_container(rendered(overlay))
    names = {e["name"] for e in container["env"] if e["name"].startswith("SERVING_")}
    known = {f"SERVING_{field.upper()}" for field in ServiceSettings.model_fields}

    assert names - known <= NOT_YET_SETTINGS
    values = {
        name.removeprefix("SERVING_").lower(): value for name, value in env_values(container).items() if name in known
    }
    ServiceSettings(**values)  # the overlay's values are valid settings


@every_overlay
def test_state_store_url_comes_from_a_secret(overlay):
    env = {e["name"]: e for e in serving_container(rendered(overlay))["env"]}

    assert env["SERVING_STATE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "fastprod-state", "key": "url"}
    assert "secretKeyRef" in env["SERVING_ADMIN_TOKEN"]["valueFrom"]


@every_overlay
def test_replicas_spread_across_zones_and_survive_voluntary_disruption(overlay):
    docs = rendered(overlay)
    template = one(docs, "Deployment")["spec"]["template"]
    pod = template["spec"]
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]

    assert "topology.kubernetes.io/zone" in keys
    assert pdb["maxUnavailable"] == 1 and hpa["minReplicas"] >= 2
    assert pdb["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()


@every_overlay
def test_autoscaler_scales_on_cpu_and_queue_depth(overlay):
    hpa = one(rendered(overlay), "HorizontalPodAutoscaler")["spec"]
    by_type = {m["type"]: m for m in hpa["metrics"]}

    assert by_type["Resource"]["resource"]["name"] == "cpu"
    assert by_type["Pods"]["pods"]["metric"]["name"] == "serving_queue_depth"
    assert hpa["scaleTargetRef"]["name"] == one(rendered(overlay), "Deployment")["metadata"]["name"]


@pytest.mark.parametrize("overlay", ["us-west", "eu-central"])
def test_region_overlay_sets_its_region_and_its_own_rollout_plan(overlay):
    docs = rendered(overlay)
    env = env_values(serving_container(docs))
    settings = ServiceSettings(regions=env["SERVING_REGIONS"], default_region=env["SERVING_DEFAULT_REGION"])
    plan = rollout_file(docs)

    assert settings.default_region == overlay and overlay in settings.regions
    assert plan == yaml.safe_load((K8S / "overlays" / overlay / "rollout.yaml").read_text())
    first_step_regions = set(plan["models"]["digits"]["steps"][0]["regions"])
    assert first_step_regions == {overlay}, "each region starts its canary at home"


def test_region_overlays_roll_out_on_different_plans():
    assert rollout_file(rendered("us-west")) != rollout_file(rendered("eu-central"))


def rollout_file(docs) -> dict:
    configmap = one(docs, "ConfigMap")
    assert configmap["metadata"]["name"] == "fastprod-rollout"
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "rollout", "configMap": {"name": "fastprod-rollout"}} in volumes
    env = env_values(serving_container(docs))
    assert env["SERVING_ROLLOUT"] == "/etc/fastprod/rollout/rollout.yaml"
    return yaml.safe_load(configmap["data"]["rollout.yaml"])


STAGES = {"off", "shadow", "canary", "promoted", "rolled_back"}
HOLD = re.compile(r"^[0-9]+[smhdw]$")


@every_overlay
def test_rollout_file_in_the_configmap_follows_the_documented_format(overlay):
    docs = rendered(overlay)
    plan = rollout_file(docs)
    regions = set(env_values(serving_container(docs)).get("SERVING_REGIONS", "").split(",")) - {""}

    assert set(plan) <= {"models", "templates"}  # templates: the plans new candidates get (the nightly's)
    for name, policy in plan["models"].items():
        assert policy["stage"] in STAGES, name
        assert isinstance(policy["stable"], int) and isinstance(policy["candidate"], int)
        *holding, last = policy["steps"]
        for step in holding:
            assert HOLD.match(step["hold"]), step
        for step in policy["steps"]:
            assert all(0 <= share <= 100 for share in step["regions"].values()), step
            assert set(step["regions"]) <= regions | {"*"}, "a step names a region the deployment does not know"
        assert last["regions"] == {"*": 100}


@every_overlay
def test_rollout_file_in_the_configmap_passes_the_services_validator(overlay):
    rollout = pytest.importorskip(
        "service.rollout.policy", reason="the service's rollout policy validator (service/rollout.py) is not built yet"
    )
    docs = rendered(overlay)
    rollout_file(docs)  # mounted where SERVING_ROLLOUT points
    text = one(docs, "ConfigMap")["data"]["rollout.yaml"]

    policies = rollout.parse_policy_text(text, f"{overlay} rollout.yaml")  # raises PolicyError naming the field

    assert set(policies.models) == set(yaml.safe_load(text)["models"])


def test_gpu_overlay_requests_a_gpu_with_the_gpu_image_and_padded_batches():
    docs = rendered("gpu")
    container = serving_container(docs)
    env = env_values(container)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]

    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-gpu")
    assert env["SERVING_PROVIDER"] == "cuda"
    assert ServiceSettings(pad_batches=env["SERVING_PAD_BATCHES"]).pad_batches is True
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


def test_cpu_overlays_request_no_gpu_and_use_the_cpu_image():
    for overlay in ("base", "us-west", "eu-central"):
        container = serving_container(rendered(overlay))
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
        assert not container["image"].endswith("-gpu")
        assert env_values(container)["SERVING_PROVIDER"] == "cpu"


def test_the_autoscalers_queue_metric_is_what_the_adapter_rules_expose():
    adapter = yaml.safe_load((K8S.parent / "prometheus" / "adapter-rules.yaml").read_text())
    exposed = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    hpa = one(rendered("base"), "HorizontalPodAutoscaler")["spec"]
    wanted = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}

    assert wanted <= exposed
    for rule in adapter["rules"]["custom"]:
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}  # the labels a ServiceMonitor adds
