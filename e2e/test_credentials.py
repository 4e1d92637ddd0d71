"""Credentials live in Secrets and never leave them (issue 22, item 1), on the real control plane.

- A URL that carries a credential (user info, a presigned signature, a token in the query) is
  refused by the API server at apply time, in every field that takes one, naming the field and the
  Secret option; nothing is stored.
- An https source gets its Authorization header from the storage Secret: the fill (its own
  command, e2e/fillpods.py) fetches with it from a loopback server that requires it; a wrong one
  fails in status without showing it; the right one fills and a real tritonserver serves.
- A storage Secret that does not exist keeps the fill pod from starting as a kubelet would
  (CreateContainerConfigError: secret "..." not found, e2e/secretrefs.py and kwok's stage), the
  status says so, and once the Secret exists the object proceeds without an edit.
- An object stored before the rule (a CRD without it) is InvalidSpec, with no child.
- Every Event, status, child object, the operator's log and the fill's log are scanned: no secret
  string is in any of them, and a `view` user cannot read the Secret.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster import REPO_ROOT
from e2e.fillpods import FillPods, claim_and_key
from e2e.kube import Kubectl, find_condition, wait_for
from e2e.operator_proc import OperatorProcess
from e2e.podservers import PodServers
from e2e.storage import volume_for_claim
from kubeforge.testing.workloads import FIXED_COST_MODEL_PY, fixed_cost_model
from kubeforge.triton.config import render_model_config
from tests.triton.models import tar_gz

pytestmark = pytest.mark.e2e
NAME = "web"
SECRET = "web-credentials"
TOKEN = "tok-e2e-7c6b5a49-never-shown"
WRONG = "tok-e2e-wrong-3f2e1d-never-shown"
MODEL = fixed_cost_model("fixed", max_batch_size=0, batching=False, step_ms=1.0)
# held out from the unit tests' list; each carries "h3ld0ut"
CREDENTIAL_URLS = [
    "https://alice:h3ld0ut@models.example/m.tgz",
    "https://b.s3.us-east-1.amazonaws.com/m.tgz?X-Amz-Date=20261204T000000Z&X-Amz-Signature=h3ld0ut",
    "https://acct.blob.core.windows.net/c/m.tgz?sv=2022-11-02&sr=b&sig=h3ld0ut",
    "https://models.example/m.tgz?token=h3ld0ut",
    "https://models.example/m.tgz?v=1&access_token=h3ld0ut",
]
REFUSED = "a credential in the URL is refused"


def _archive() -> bytes:
    config = render_model_config(MODEL)
    assert config is not None
    return tar_gz({"fixed/config.pbtxt": config, "fixed/1/model.py": FIXED_COST_MODEL_PY})


@contextmanager
def _model_server() -> Iterator[tuple[str, list[str]]]:
    """(URL of the archive, the Authorization headers received): 401 without the right one."""
    archive, received = _archive(), []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.append(self.headers.get("Authorization") or "")
            ok = self.path == "/fixed.tgz" and self.headers.get("Authorization") == f"Bearer {TOKEN}"
            body = archive if ok else b"unauthorized"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fixed.tgz", received
    finally:
        server.shutdown()
        server.server_close()


def _md(namespace: str, source: str, cache: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "models": [{**MODEL.wire(), "source": source}],
        "storage": {"secretName": SECRET},
    }
    if cache:
        spec["cache"] = {"size": "1Gi"}
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": spec,
    }


def _secret(kubectl: Kubectl, namespace: str, token: str) -> None:
    kubectl.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": SECRET, "namespace": namespace},
                "stringData": {"HTTP_AUTHORIZATION": f"Bearer {token}"},
            }
        )
    )


def _status(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    return dict(kubectl.json("get", "md", NAME, namespace=namespace).get("status") or {})


def _everything(kubectl: Kubectl, namespace: str, *logs: str) -> str:
    """What anyone but the Secret's readers can see: every object of the namespace but Secrets,
    its Events, and the logs."""
    kinds = "md,trainingjobs,deployments,replicasets,jobs,pods,pvc,services,configmaps"
    return "\n".join(
        [
            kubectl("get", kinds, "-o", "json", namespace=namespace).stdout,
            kubectl("get", "events", "-o", "json", namespace=namespace).stdout,
            *logs,
        ]
    )


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
def test_a_url_with_a_credential_is_refused_at_apply(kubectl: Kubectl, namespace: str, url: str) -> None:
    md = _md(namespace, url, cache=False)
    lora = {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "lora", "namespace": namespace},
        "spec": {
            "gpu": {"count": 1},
            "models": [
                {
                    "name": "m",
                    "format": "vllm",
                    "source": "hf://org/model",
                    "llm": {"loraAdapters": [{"name": "a", "source": url}]},
                }
            ],
        },
    }
    tj = {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "train", "namespace": namespace},
        "spec": {"image": "trainer:1", "output": {"uri": url, "modelName": "m"}},
    }
    for body, field, instead in (
        (md, "spec.models[0].source", "storage.secretName"),
        (lora, "spec.models[0].llm.loraAdapters[0].source", "storage.secretName"),
        (tj, "spec.output.uri", "secretKeyRef"),
    ):
        refused = kubectl("apply", "-f", "-", input=json.dumps(body), namespace=namespace, check=False)
        assert refused.returncode != 0, body
        assert field in refused.stderr and REFUSED in refused.stderr and instead in refused.stderr, (
            refused.stderr
        )
    stored = kubectl("get", "md,trainingjobs", "-o", "name", namespace=namespace).stdout
    assert stored.strip() == ""


def test_https_credentials_come_from_the_secret_and_never_leave_it(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    body = _md(namespace, "")
    log_offset = operator.log_size()
    claims = tmp_path / "claims"
    with _model_server() as (url, received):
        body["spec"]["models"][0]["source"] = url
        claim, key = claim_and_key(body)
        volume_for_claim(kubectl, namespace, claim)
        servers = PodServers(
            kubectl,
            namespace,
            NAME,
            tmp_path / "pvc",
            tmp_path / "servers",
            lambda _: None,
            claims_root=claims,
        )
        with FillPods(kubectl, namespace, claims, tmp_path / "fill") as fills, servers:
            # 1. no Secret yet: the fill pod does not start, and the status names the Secret
            kubectl.apply(json.dumps(body))
            missing = f'secret "{SECRET}" not found'
            wait_for(
                lambda: missing in ((_status(kubectl, namespace).get("cache") or {}).get("message") or ""),
                timeout=60,
                message=lambda: f"the status naming the missing Secret: {_status(kubectl, namespace)}",
            )
            assert fills.runs == [] and received == []

            # 2. the Secret appears, with a wrong token: the fill runs (no edit) and fails, saying why
            _secret(kubectl, namespace, WRONG)

            def failed() -> dict[str, Any] | None:
                cache = _status(kubectl, namespace).get("cache") or {}
                return cache if cache.get("state") == "Failed" else None

            cache = wait_for(
                failed, timeout=90, message=lambda: f"a failed fill: {_status(kubectl, namespace)}"
            )
            assert "HTTP 401" in cache["message"]
            assert received == [f"Bearer {WRONG}"]

            # 3. the right token, and the failed fill Job deleted to retry at once: filled and served
            _secret(kubectl, namespace, TOKEN)
            kubectl("delete", "job", cache["job"], "--wait=false", namespace=namespace)

            def ready() -> dict[str, Any] | None:
                cache = _status(kubectl, namespace).get("cache") or {}
                return cache if cache.get("state") == "Ready" and cache.get("key") == key else None

            wait_for(ready, timeout=120, message=lambda: f"a filled cache: {_status(kubectl, namespace)}")
            servers.wait_for_servers(1, timeout=180)
            assert received[-1] == f"Bearer {TOKEN}"
            fill_logs = [run.log for run in fills.runs]
        assert [run.exit_code for run in fills.runs] == [1, 0]
    md_now = kubectl.json("get", "md", NAME, namespace=namespace)
    assert find_condition(md_now, "Ready") is not None
    seen = _everything(kubectl, namespace, operator.log_text(log_offset), *fill_logs)
    assert TOKEN not in seen and WRONG not in seen

    # the built-in view role reads what was scanned above (Events, pods, ...), not the Secret (the
    # chart's kubeforge-view adds the ModelDeployments: e2e/test_chart.py)
    kubectl("create", "rolebinding", "viewer", "--clusterrole=view", "--user=viewer", namespace=namespace)
    can = {
        what: kubectl(
            "auth", "can-i", "get", what, "--as=viewer", namespace=namespace, check=False
        ).stdout.strip()
        for what in (f"secret/{SECRET}", "events", "pods", "jobs.batch")
    }
    assert can == {f"secret/{SECRET}": "no", "events": "yes", "pods": "yes", "jobs.batch": "yes"}


def _without_the_credential_rule(path: Path) -> str:
    """The CRD as a release before the rule had it."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            rules = node.get("x-kubernetes-validations")
            if rules is not None:
                node["x-kubernetes-validations"] = [r for r in rules if REFUSED not in r["message"]]
                if not node["x-kubernetes-validations"]:
                    del node["x-kubernetes-validations"]
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)
        return node

    return json.dumps(strip(yaml.safe_load(path.read_text())))


def test_an_object_stored_before_the_rule_is_invalid_and_says_nothing_of_its_credential(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, crds_restored: None
) -> None:
    kubectl.apply(
        _without_the_credential_rule(REPO_ROOT / "crds" / "modeldeployments.kubeforge.io.yaml"),
        server_side=True,
    )
    log_offset = operator.log_size()
    body = _md(namespace, CREDENTIAL_URLS[0], cache=False)
    wait_for(
        lambda: (
            kubectl("apply", "-f", "-", input=json.dumps(body), namespace=namespace, check=False).returncode
            == 0
        ),
        timeout=30,
        message="the CRD without the rule to be served",
    )
    kubectl.apply(REPO_ROOT / "crds", server_side=True)

    def invalid() -> dict[str, Any] | None:
        md = kubectl.json("get", "md", NAME, namespace=namespace)
        ready = find_condition(md, "Ready")
        return md if ready is not None and ready["reason"] == "InvalidSpec" else None

    md = wait_for(invalid, timeout=60, message=lambda: f"InvalidSpec: {_status(kubectl, namespace)}")
    ready = find_condition(md, "Ready")
    assert ready is not None and REFUSED in ready["message"] and "spec.models[0]" in ready["message"]
    assert kubectl("get", "deployments,services,jobs", "-o", "name", namespace=namespace).stdout.strip() == ""
    status = json.dumps(md["status"])
    events = kubectl("get", "events", "-o", "json", namespace=namespace).stdout
    assert "h3ld0ut" not in status + events + operator.log_text(log_offset)


def test_a_missing_secret_holds_the_serving_pods_until_it_exists(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    """No cache: the serving pods' init container fetches, with the Secret; until it exists the
    pods do not start and the ModelDeployment is Degraded naming it; then Ready without an edit."""
    kubectl.apply(json.dumps(_md(namespace, "https://models.example/fixed.tgz", cache=False)))
    missing = f'secret "{SECRET}" not found'

    def degraded() -> dict[str, Any] | None:
        md = kubectl.json("get", "md", NAME, namespace=namespace)
        found = find_condition(md, "Degraded")
        return found if found is not None and missing in found["message"] else None

    condition = wait_for(
        degraded, timeout=60, message=lambda: f"Degraded naming the Secret: {_status(kubectl, namespace)}"
    )
    assert condition["status"] == "True" and condition["reason"] == "CreateContainerConfigError"
    _secret(kubectl, namespace, TOKEN)

    def ready() -> bool:
        found = find_condition(kubectl.json("get", "md", NAME, namespace=namespace), "Ready")
        return found is not None and found["status"] == "True"

    wait_for(
        ready, timeout=60, message=lambda: f"Ready once the Secret exists: {_status(kubectl, namespace)}"
    )
