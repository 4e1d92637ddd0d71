"""The model cache on the local cluster: the operator's claim and fill Job, the fill run for real from
an S3 server (moto) or a loopback Hugging Face Hub by the fill pod's own command (e2e/fillpods.py),
the serving pods' own init container and a real tritonserver loading from the cache
(e2e/podservers.py).

What is proved: serving waits for the fill; status.cache says Ready with the fill's bytes and digest;
a new replica, and a scale-up from zero, start with the object store gone and no credentials
(no download); a source change
fills a new key while the old pods serve; a failed fill is Failed, Degraded/Stalled, an Event, and no
pod; a fill that cannot start says why; an operator restarted mid-fill converges; no Secret value appears in a spec, status, event or
log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.fillpods import FillPods, claim_and_key
from e2e.kube import Kubectl, find_condition, wait_for
from e2e.nodes import H100_80GB
from e2e.operator_proc import OperatorProcess
from e2e.podservers import PodServers
from e2e.storage import volume_for_claim
from kubeforge.builders.pods import GPU_PRODUCT_LABEL
from kubeforge.testing.hub import FakeHub, HubRepository, serve_hub
from kubeforge.testing.triton import free_port
from kubeforge.testing.workloads import FIXED_COST_MODEL_PY, fixed_cost_model
from kubeforge.triton.cache import measure
from kubeforge.triton.config import render_model_config

pytestmark = pytest.mark.e2e
NAME = "cached"
SECRET_KEY = "e2e-s3cr3t-access-key-never-shown"
HF_SECRET = "hf_e2e-t0ken-never-shown"
MODEL = fixed_cost_model("fixed", max_batch_size=0, batching=False, step_ms=1.0)


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[str, Any]]:
    """(endpoint, boto3 S3 resource) of a moto server on loopback."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    resource = boto3.resource(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="e2e",
        aws_secret_access_key=SECRET_KEY,
    )
    try:
        yield endpoint, resource
    finally:
        server.stop()


def _upload(s3: Any, bucket: str, prefix: str) -> None:
    created = (
        s3.create_bucket(Bucket=bucket)
        if bucket not in [b.name for b in s3.buckets.all()]
        else s3.Bucket(bucket)
    )
    config = render_model_config(MODEL)
    assert config is not None
    created.put_object(Key=f"{prefix}/config.pbtxt", Body=config.encode())
    created.put_object(Key=f"{prefix}/1/model.py", Body=FIXED_COST_MODEL_PY.encode())


def _secret(kubectl: Kubectl, namespace: str, endpoint: str, hf_endpoint: str | None = None) -> None:
    extra = {"HF_ENDPOINT": hf_endpoint} if hf_endpoint else {}
    kubectl.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s3-credentials", "namespace": namespace},
                "stringData": {
                    "AWS_ACCESS_KEY_ID": "e2e",
                    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": endpoint,
                    "HF_TOKEN": HF_SECRET,
                    **extra,
                },
            }
        )
    )


def _body(namespace: str, source: str, replicas: int = 1) -> dict[str, Any]:
    model = {**MODEL.wire(), "source": source}
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "models": [model],
            "replicas": replicas,
            "storage": {"secretName": "s3-credentials"},
            "cache": {"size": "1Gi"},
        },
    }


def _md(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    result: dict[str, Any] = kubectl.json("get", "md", NAME, namespace=namespace)
    return result


def _cache_state(
    kubectl: Kubectl, namespace: str, state: str, key: str, timeout: float = 60
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        md = _md(kubectl, namespace)
        cache = (md.get("status") or {}).get("cache") or {}
        return md if cache.get("state") == state and cache.get("key") == key else None

    return wait_for(
        check,
        timeout=timeout,
        message=lambda: f"cache {key} {state}: {_md(kubectl, namespace).get('status')}",
    )


def _deployment(kubectl: Kubectl, namespace: str) -> dict[str, Any] | None:
    result = kubectl("get", "deployment", NAME, "-o", "json", namespace=namespace, check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def _no_secret_anywhere(kubectl: Kubectl, namespace: str, operator_log: str) -> None:
    seen = [
        kubectl("get", "md,deployments,replicasets,jobs,pods,pvc", "-o", "json", namespace=namespace).stdout,
        kubectl("get", "events", "-o", "json", namespace=namespace).stdout,
        operator_log,
    ]
    for text in seen:
        assert SECRET_KEY not in text and HF_SECRET not in text


def test_fill_once_then_serve_from_the_cache(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, s3: tuple[str, Any], tmp_path: Path
) -> None:
    endpoint, resource = s3
    bucket = f"models-{namespace}"[:63]
    _upload(resource, bucket, "fixed")
    _secret(kubectl, namespace, endpoint)
    body = _body(namespace, f"s3://{bucket}/fixed")
    claim, key = claim_and_key(body)
    volume_for_claim(kubectl, namespace, claim)
    log_offset = operator.log_size()
    claims = tmp_path / "claims"
    fills = FillPods(kubectl, namespace, claims, tmp_path / "fill")
    fills.hold.set()  # the fill "takes a while": nothing may serve before it completes
    servers = PodServers(
        kubectl, namespace, NAME, tmp_path / "pvc", tmp_path / "servers", lambda _: None, claims_root=claims
    )
    with fills, servers:
        kubectl.apply(json.dumps(body))
        md = _cache_state(kubectl, namespace, "Filling", key)
        assert find_condition(md, "Ready")["reason"] == "CacheFilling"  # type: ignore[index]
        assert _deployment(kubectl, namespace) is None  # no pod before the cache is filled
        job = kubectl.json("get", "job", md["status"]["cache"]["job"], namespace=namespace)
        assert job["metadata"]["ownerReferences"][0]["name"] == NAME

        fills.hold.clear()
        md = _cache_state(kubectl, namespace, "Ready", key)
        (run,) = fills.runs
        assert run.exit_code == 0, run.log
        cache = md["status"]["cache"]
        assert (cache["bytes"], cache["digest"]) == measure(claims / claim / key)
        assert cache["claimName"] == claim and cache["completedAt"]
        servers.wait_for_servers(1, timeout=120)
        wait_for(
            lambda: _md(kubectl, namespace)["status"].get("phase") == "Ready", timeout=60, message="Ready"
        )

        # a source change fills a new key; the running pods keep serving the old one meanwhile
        _upload(resource, bucket, "fixed-v2")
        fills.hold.set()
        body2 = _body(namespace, f"s3://{bucket}/fixed-v2")
        _, key2 = claim_and_key(body2)
        template_before = _deployment(kubectl, namespace)["spec"]["template"]  # type: ignore[index]
        kubectl.apply(json.dumps(body2))
        _cache_state(kubectl, namespace, "Filling", key2)
        assert _deployment(kubectl, namespace)["spec"]["template"] == template_before  # type: ignore[index]
        # meanwhile it still scales (the autoscaler, kubectl scale): on the previous models
        kubectl("scale", "md", NAME, "--replicas=2", namespace=namespace)
        wait_for(
            lambda: (_deployment(kubectl, namespace) or {})["spec"]["replicas"] == 2,
            timeout=30,
            message="the Deployment follows the replicas while the new key fills",
        )
        assert _deployment(kubectl, namespace)["spec"]["template"] == template_before  # type: ignore[index]
        servers.wait_for_servers(2, timeout=120)
        fills.hold.clear()
        _cache_state(kubectl, namespace, "Ready", key2)

        def switched() -> bool:
            dep = _deployment(kubectl, namespace) or {}
            init = dep["spec"]["template"]["spec"]["initContainers"][0]
            return bool(init["args"][-1] == f"/cache/{key2}")

        wait_for(switched, timeout=30, message="the Deployment serves the new key")
        wait_for(
            lambda: (
                [j["metadata"]["name"] for j in kubectl.json("get", "jobs", namespace=namespace)["items"]]
                == [md["status"]["cache"]["job"].replace(key, key2)]
            ),
            timeout=30,
            message="the earlier fill Job is deleted",
        )
        wait_for(
            lambda: _md(kubectl, namespace)["status"].get("phase") == "Ready", timeout=120, message="Ready"
        )
        kubectl("scale", "md", NAME, "--replicas=1", namespace=namespace)
        wait_for(lambda: len(servers.servers) == 1, timeout=60, message="one server")

        # never download again: the object store is gone, and so are the credentials
        resource.Bucket(bucket).objects.all().delete()
        kubectl("delete", "secret", "s3-credentials", namespace=namespace)
        servers_before = set(servers.servers)
        kubectl("scale", "md", NAME, "--replicas=2", namespace=namespace)
        servers.wait_for_servers(2, timeout=180)  # the new replica's tritonserver loaded from the cache
        assert servers.errors == []
        new_pods = set(servers.servers) - servers_before
        assert new_pods
        # ... and so does a scale-up from zero
        kubectl("scale", "md", NAME, "--replicas=0", namespace=namespace)
        wait_for(lambda: not servers.servers, timeout=60, message="no server at zero replicas")
        kubectl("scale", "md", NAME, "--replicas=1", namespace=namespace)
        servers.wait_for_servers(1, timeout=180)
        assert servers.errors == []

        # the fill Job goes (a TTL, a person): the completion is in status, nothing fills again
        job2 = _md(kubectl, namespace)["status"]["cache"]["job"]
        kubectl("delete", "job", job2, namespace=namespace)
        kubectl("annotate", "md", NAME, "e2e/poke=1", namespace=namespace)  # and a reconcile, to be sure
        time.sleep(5)
        assert kubectl.json("get", "jobs", namespace=namespace)["items"] == []
        md = _cache_state(kubectl, namespace, "Ready", key2)
        assert md["status"]["phase"] == "Ready"
    _no_secret_anywhere(kubectl, namespace, operator.log_text(log_offset))


def test_a_failed_fill_is_reported_and_starts_no_pod(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, s3: tuple[str, Any], tmp_path: Path
) -> None:
    endpoint, _ = s3
    _secret(kubectl, namespace, endpoint)
    body = _body(namespace, "s3://no-such-bucket-e2e/fixed")
    claim, key = claim_and_key(body)
    volume_for_claim(kubectl, namespace, claim)
    log_offset = operator.log_size()
    with FillPods(kubectl, namespace, tmp_path / "claims", tmp_path / "fill") as fills:
        kubectl.apply(json.dumps(body))
        md = _cache_state(kubectl, namespace, "Failed", key, timeout=90)
    (run,) = fills.runs
    assert run.exit_code == 1
    message = md["status"]["cache"]["message"]
    assert "NoSuchBucket" in message and "no-such-bucket-e2e" in message
    for condition in ("Degraded", "Stalled"):
        found = find_condition(md, condition)
        assert found is not None and (found["status"], found["reason"]) == ("True", "CacheFillFailed")
    assert md["status"]["phase"] == "Degraded"
    assert _deployment(kubectl, namespace) is None

    def event() -> list[dict[str, Any]]:
        items = kubectl.json("get", "events", namespace=namespace)["items"]
        return [e for e in items if e.get("reason") == "CacheFillFailed" and e["type"] == "Warning"]

    (warning,) = wait_for(event, timeout=30, message="a CacheFillFailed event")
    assert "NoSuchBucket" in warning["message"]
    _no_secret_anywhere(kubectl, namespace, operator.log_text(log_offset))


def test_fill_from_the_hugging_face_hub_with_the_secrets_token(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    """hf://org/model@revision through huggingface_hub, against a loopback Hub that requires the token:
    the token goes from the Secret to the fill container by reference, and to the Hub as a header only."""
    repo = tmp_path / "hub" / "fixed"
    (repo / "1").mkdir(parents=True)
    (repo / "1" / "model.py").write_text(FIXED_COST_MODEL_PY)
    config = render_model_config(MODEL)
    assert config is not None
    (repo / "config.pbtxt").write_text(config)
    hub = FakeHub({"team/fixed": HubRepository(repo, revision="v1", token=HF_SECRET)})
    with serve_hub(hub):
        _secret(kubectl, namespace, "http://127.0.0.1:1", hf_endpoint=hub.url)
        body = _body(namespace, "hf://team/fixed@v1")
        claim, key = claim_and_key(body)
        volume_for_claim(kubectl, namespace, claim)
        log_offset = operator.log_size()
        claims = tmp_path / "claims"
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
            kubectl.apply(json.dumps(body))
            md = _cache_state(kubectl, namespace, "Ready", key, timeout=90)
            (run,) = fills.runs
            assert run.exit_code == 0, run.log
            assert md["status"]["cache"]["digest"] == measure(claims / claim / key)[1]
            assert hub.authorizations and set(hub.authorizations) == {f"Bearer {HF_SECRET}"}
            servers.wait_for_servers(1, timeout=120)
        assert HF_SECRET not in run.log
    _no_secret_anywhere(kubectl, namespace, operator.log_text(log_offset))


def test_a_fill_held_up_says_why(kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> None:
    """No volume for the operator's claim (no provisioner here): the fill pod cannot be scheduled, and
    the status says so in the scheduler's words."""
    body = _body(namespace, "s3://models/fixed")
    _, key = claim_and_key(body)
    kubectl.apply(json.dumps(body))

    def held_up() -> dict[str, Any] | None:
        md = _md(kubectl, namespace)
        degraded = find_condition(md, "Degraded") or {}
        return md if degraded.get("reason") == "Unschedulable" else None

    md = wait_for(held_up, timeout=60, message="Degraded: Unschedulable")
    cache = md["status"]["cache"]
    assert (cache["state"], cache["key"]) == ("Filling", key)
    assert "PersistentVolumeClaim" in cache["message"]
    assert _deployment(kubectl, namespace) is None


def test_an_operator_restarted_mid_fill_converges(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, s3: tuple[str, Any], tmp_path: Path
) -> None:
    endpoint, resource = s3
    bucket = f"restart-{namespace}"[:63]
    _upload(resource, bucket, "fixed")
    _secret(kubectl, namespace, endpoint)
    body = _body(namespace, f"s3://{bucket}/fixed")
    claim, key = claim_and_key(body)
    volume_for_claim(kubectl, namespace, claim)
    own_operator.start()
    kubectl.apply(json.dumps(body))
    _cache_state(kubectl, namespace, "Filling", key)
    own_operator.kill()  # mid-fill: the Job runs on without the operator
    with FillPods(kubectl, namespace, tmp_path / "claims", tmp_path / "fill") as fills:
        fills.wait_for_runs(1)
        wait_for(
            lambda: find_condition(
                kubectl.json("get", "job", "-l", "kubeforge.io/owner-name=" + NAME, namespace=namespace)[
                    "items"
                ][0],
                "Complete",
            ),
            timeout=60,
            message="the fill Job completes while no operator runs",
        )
    own_operator.start()
    md = _cache_state(kubectl, namespace, "Ready", key)
    assert md["status"]["cache"]["digest"] == measure(tmp_path / "claims" / claim / key)[1]
    wait_for(
        lambda: _deployment(kubectl, namespace), timeout=30, message="the Deployment, once the cache is Ready"
    )
    jobs = kubectl.json("get", "jobs", namespace=namespace)["items"]
    assert len(jobs) == 1  # the restarted operator made no second fill


def _pod_nodes(kubectl: Kubectl, namespace: str, selector: str) -> list[str]:
    pods = kubectl.json("get", "pods", "-l", selector, namespace=namespace)["items"]
    return [p["spec"].get("nodeName", "") for p in pods if not p["metadata"].get("deletionTimestamp")]


def test_a_read_write_once_cache_keeps_its_pods_on_one_node(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, s3: tuple[str, Any], tmp_path: Path
) -> None:
    """A ReadWriteOnce claim attaches to one node. The real scheduler places the fill on a node of the
    serving pods' kind, every replica on one node (without the affinity it spreads them), and a refill
    after an edit made while the operator was down beside them."""
    endpoint, resource = s3
    bucket = f"rwo-{namespace}"[:63]
    _upload(resource, bucket, "fixed")
    _upload(resource, bucket, "fixed-v2")
    _secret(kubectl, namespace, endpoint)
    body = _body(namespace, f"s3://{bucket}/fixed", replicas=2)
    body["spec"]["cache"]["accessMode"] = "ReadWriteOnce"
    body["spec"]["gpu"] = {"count": 1, "product": H100_80GB}
    claim, key = claim_and_key(body)
    volume_for_claim(kubectl, namespace, claim, access_modes=("ReadWriteOnce",))
    serving = f"kubeforge.io/owner-name={NAME}"
    fill = "app.kubernetes.io/component=model-cache"
    own_operator.start()
    with FillPods(kubectl, namespace, tmp_path / "claims", tmp_path / "fill") as fills:
        kubectl.apply(json.dumps(body))
        _cache_state(kubectl, namespace, "Ready", key)
        (fill_node,) = _pod_nodes(kubectl, namespace, fill)
        assert kubectl.json("get", "node", fill_node)["metadata"]["labels"][GPU_PRODUCT_LABEL] == H100_80GB
        nodes = wait_for(
            lambda: (
                (found := _pod_nodes(kubectl, namespace, serving))
                and len(found) == 2
                and all(found)
                and found
            ),
            timeout=60,
            message="two serving pods scheduled",
        )
        assert len(set(nodes)) == 1, nodes

        own_operator.kill()
        body["spec"]["models"][0]["source"] = f"s3://{bucket}/fixed-v2"
        _, key2 = claim_and_key(body)
        kubectl.apply(json.dumps(body))
        own_operator.start()
        _cache_state(kubectl, namespace, "Ready", key2)
        assert len(fills.runs) == 2 and all(run.exit_code == 0 for run in fills.runs), fills.runs

    def refill_node() -> str | None:
        jobs = kubectl.json("get", "jobs", "-l", f"kubeforge.io/cache-key={key2}", namespace=namespace)[
            "items"
        ]
        uid = jobs[0]["metadata"]["uid"] if jobs else None
        found = _pod_nodes(kubectl, namespace, f"batch.kubernetes.io/controller-uid={uid}") if uid else []
        return found[0] if found else None

    assert wait_for(refill_node, timeout=30, message="the refill's pod") == nodes[0]
    # the pods of the new key roll out on the same node
    wait_for(
        lambda: (
            (dep := _deployment(kubectl, namespace))
            and dep["spec"]["template"]["spec"]["initContainers"][0]["args"][-1] == f"/cache/{key2}"
            and (dep.get("status") or {}).get("updatedReplicas") == 2
        ),
        timeout=60,
        message="the Deployment serves the new key",
    )
    after = wait_for(
        lambda: (
            (found := _pod_nodes(kubectl, namespace, serving)) and len(found) == 2 and all(found) and found
        ),
        timeout=60,
        message="two serving pods of the new key scheduled",
    )
    assert set(after) == {nodes[0]}, after


def test_a_failed_fill_is_retried_and_fills_once_the_bucket_exists(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, s3: tuple[str, Any], tmp_path: Path
) -> None:
    """No edit and no Job deleted by hand: the bucket appears, and the next retry fills the cache."""
    endpoint, resource = s3
    bucket = f"late-{namespace}"[:63]
    _secret(kubectl, namespace, endpoint)
    body = _body(namespace, f"s3://{bucket}/fixed")
    claim, key = claim_and_key(body)
    volume_for_claim(kubectl, namespace, claim)
    own_operator.start(env={"KUBEFORGE_FILL_RETRY_SECONDS": "3"})
    with FillPods(kubectl, namespace, tmp_path / "claims", tmp_path / "fill") as fills:
        kubectl.apply(json.dumps(body))
        md = _cache_state(kubectl, namespace, "Failed", key, timeout=90)
        cache = md["status"]["cache"]
        assert "NoSuchBucket" in cache["message"] and cache["retryAt"], cache
        md = wait_for(
            lambda: (m := _md(kubectl, namespace))["status"]["cache"].get("retries", 0) >= 1 and m,
            timeout=30,
            message="a retry",
        )
        _upload(resource, bucket, "fixed")
        md = _cache_state(kubectl, namespace, "Ready", key, timeout=90)
    assert [run.exit_code for run in fills.runs][-1] == 0 and fills.runs[0].exit_code == 1, fills.runs
    assert md["status"]["cache"]["retries"] == len(fills.runs) - 1
    assert md["status"]["cache"]["digest"] == measure(tmp_path / "claims" / claim / key)[1]
    wait_for(lambda: _deployment(kubectl, namespace), timeout=30, message="the Deployment, once filled")
    jobs = kubectl.json("get", "jobs", namespace=namespace)["items"]
    assert [j["metadata"]["name"] for j in jobs] == [cache["job"]]  # one Job of the key, the one that filled
    for condition in ("Degraded", "Stalled"):
        found = find_condition(md, condition)
        assert found is not None and found["status"] == "False", md["status"]["conditions"]
