"""deploy/k8s/components/nightly: the nightly fine-tune as a CronJob beside an overlay, on the shared model volume."""

from __future__ import annotations

import functools
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy_tools import K8S, OVERLAYS, one, run_tool, serving_container, tool

COMPONENT = K8S / "components" / "nightly"


@functools.cache
def with_nightly(overlay: str) -> tuple[dict[str, Any], ...]:
    """What ``kubectl kustomize`` renders for an overlay that adds the nightly component."""
    with tempfile.TemporaryDirectory() as folder:
        rel = functools.partial(os.path.relpath, start=folder)
        (Path(folder) / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources: [{rel(K8S / 'overlays' / overlay)}]\ncomponents: [{rel(COMPONENT)}]\n"
        )
        out = run_tool(tool("kubectl"), "kustomize", folder).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def job_container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_component_adds_a_cronjob_and_the_shared_model_volume_in_the_namespace(overlay):
    docs = with_nightly(overlay)

    assert {"CronJob", "PersistentVolumeClaim"} <= {doc["kind"] for doc in docs}
    assert {doc["metadata"].get("namespace") for doc in docs} == {"fastprod"}


def test_the_rendered_cronjob_and_claim_pass_strict_schema_validation():
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    docs = with_nightly("us-west")
    for kind in ("CronJob", "PersistentVolumeClaim", "Deployment"):
        kubernetes_validate.validate(one(docs, kind), "1.30", strict=True)


def test_it_runs_at_midnight_utc_never_twice_at_once_and_never_retries_a_refusal():
    spec = one(with_nightly("us-west"), "CronJob")["spec"]

    assert (spec["schedule"], spec["timeZone"], spec["concurrencyPolicy"]) == ("0 0 * * *", "Etc/UTC", "Forbid")
    assert spec["jobTemplate"]["spec"]["backoffLimit"] == 0


def test_the_job_writes_the_volume_the_replicas_serve_read_only():
    docs = with_nightly("us-west")
    job = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    serving = one(docs, "Deployment")["spec"]["template"]["spec"]
    claim = one(docs, "PersistentVolumeClaim")

    def claim_of(pod: dict[str, Any], mount: dict[str, Any]) -> str:
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        return volume["persistentVolumeClaim"]["claimName"]

    job_mount = next(m for m in job_container(docs)["volumeMounts"] if m["mountPath"] == "/models")
    serving_mount = next(m for m in serving_container(docs)["volumeMounts"] if m["mountPath"] == "/models")
    assert claim_of(job, job_mount) == claim_of(serving, serving_mount) == claim["metadata"]["name"]
    assert serving_mount["readOnly"] is True and not job_mount.get("readOnly", False)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_store_url_and_the_admin_token_come_from_the_services_secrets():
    env = {e["name"]: e for e in job_container(with_nightly("us-west"))["env"]}

    assert env["SERVING_STATE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "fastprod-state", "key": "url"}
    assert env["SERVING_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "fastprod-admin", "key": "token"}


def test_the_jobs_command_is_one_the_training_cli_accepts(monkeypatch):
    from training.cli import build_parser

    container = job_container(with_nightly("us-west"))
    values = {e["name"]: e.get("value", f"secret-{e['name']}") for e in container["env"]}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    args = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in container["args"]]
    assert args[:4] == ["python", "-m", "training", "nightly"]

    parsed = build_parser().parse_args(args[3:])

    assert (parsed.model, parsed.repo, parsed.since) == ("bears", Path("/models"), 86_400.0)
    assert parsed.log == "secret-SERVING_STATE_URL" and parsed.token == "secret-SERVING_ADMIN_TOKEN"
    assert parsed.service == "http://fastprod-serving" and parsed.template == "course"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_template_the_job_hands_its_candidate_over_with_is_in_the_overlays_rollout_file(overlay):
    from service.rollout.policy import parse_policy_text

    docs = with_nightly(overlay)
    template = next(a.split("=", 1)[1] for a in job_container(docs)["args"] if a.startswith("--template="))
    rollout = one(docs, "ConfigMap")["data"]["rollout.yaml"]

    assert template in parse_policy_text(rollout).templates
