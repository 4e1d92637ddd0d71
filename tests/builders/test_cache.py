"""The model cache's children: the claim, the fill Job, and the serving pods that read the cache."""

from __future__ import annotations

from typing import Any

from kubeforge.api.modeldeployment import ModelDeployment
from kubeforge.builders.cache import (
    build_cache_claim,
    build_cache_fill_job,
    cache_claim_name,
    fill_job_name,
    model_cache_key,
)
from kubeforge.builders.modeldeployment import build_triton_deployment
from kubeforge.settings import Settings

MODEL = {"name": "resnet50", "source": "s3://models/resnet50", "format": "onnx"}


def md(cache: dict[str, Any] | None = None, name: str = "demo", **spec: Any) -> ModelDeployment:
    body: dict[str, Any] = {"models": [MODEL], "storage": {"secretName": "creds"}}
    body.update(spec)
    if cache is not None:
        body["cache"] = cache
    return ModelDeployment.model_validate(
        {"metadata": {"name": name, "namespace": "ns", "uid": "u-1"}, "spec": body}
    )


def test_no_cache_no_children_and_pods_fetch_themselves() -> None:
    plain = md()
    assert build_cache_claim(plain) is None and build_cache_fill_job(plain, Settings()) is None
    pod = build_triton_deployment(plain, Settings())["spec"]["template"]["spec"]
    assert "--cache-dir" not in pod["initContainers"][0]["args"]
    assert pod["initContainers"][0]["envFrom"][0]["secretRef"]["name"] == "creds"


def test_the_operators_claim() -> None:
    claim = build_cache_claim(md({"size": "200Gi", "storageClassName": "fast"}))
    assert claim is not None
    assert claim["metadata"]["name"].startswith("demo-model-cache-")
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "200Gi"}},
        "storageClassName": "fast",
    }
    # what a claim cannot change names a new claim; its size does not
    names = {
        cache_claim_name(md(c))
        for c in (
            {"size": "1Gi"},
            {"size": "1Gi", "storageClassName": "fast"},
            {"size": "1Gi", "accessMode": "ReadWriteOnce"},
        )
    }
    assert len(names) == 3
    assert cache_claim_name(md({"size": "1Gi"})) == cache_claim_name(md({"size": "2Gi"}))
    assert build_cache_claim(md({"claimName": "shared"})) is None
    assert cache_claim_name(md({"claimName": "shared"})) == "shared"


def test_the_key_follows_sources_and_claim_not_config() -> None:
    base = md({"size": "1Gi"})
    configured = md({"size": "1Gi"}, models=[{**MODEL, "config": {"maxBatchSize": 4}}])
    other_source = md({"size": "1Gi"}, models=[{**MODEL, "source": "s3://models/resnet50-v2"}])
    assert model_cache_key(base) == model_cache_key(configured)
    assert model_cache_key(base) != model_cache_key(other_source)
    assert model_cache_key(base) != model_cache_key(md({"claimName": "shared"}))
    assert model_cache_key(md()) is None


def test_the_fill_job() -> None:
    spec = md({"size": "1Gi"}, imagePullSecrets=["reg"])
    key = model_cache_key(spec)
    job = build_cache_fill_job(spec, Settings())
    assert job is not None and key is not None
    assert job["metadata"]["name"] == f"demo-fill-{key}"
    assert job["metadata"]["labels"]["kubeforge.io/owner-name"] == "demo"
    template = job["spec"]["template"]
    # its pods are selected by nothing of the serving side
    assert not any(k.startswith("kubeforge.io/owner") for k in template["metadata"]["labels"])
    pod = template["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["imagePullSecrets"] == [{"name": "reg"}]
    (container,) = pod["containers"]
    assert container["args"][:5] == ["fill-cache", "--root", "/cache", "--key", key]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["volumeMounts"][0] == {"name": "model-cache", "mountPath": "/cache"}
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": cache_claim_name(spec)}
    # credentials only by reference to the Secret, which must exist (not optional)
    assert [e["name"] for e in container["env"]] == ["KUBEFORGE_CACHE_PLAN"]
    assert container["envFrom"] == [{"prefix": "KUBEFORGE_STORAGE_", "secretRef": {"name": "creds"}}]
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [1, 2]


def test_job_names_fit_a_label() -> None:
    long = md({"size": "1Gi"}, name="a" * 63)
    key = model_cache_key(long)
    assert key is not None
    assert len(fill_job_name(long, key)) <= 63


def test_serving_pods_read_the_cache_read_only_and_get_no_credentials() -> None:
    spec = md({"size": "1Gi"})
    key = model_cache_key(spec)
    pod = build_triton_deployment(spec, Settings())["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"][-2:] == ["--cache-dir", f"/cache/{key}"]
    assert [e["name"] for e in init["env"]] == ["KUBEFORGE_MODELS"]
    mount = {"name": "model-cache", "mountPath": "/cache", "readOnly": True}
    assert mount in init["volumeMounts"] and mount in pod["containers"][0]["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert volume["persistentVolumeClaim"] == {"claimName": cache_claim_name(spec), "readOnly": True}


SELF = {"kubeforge.io/owner-kind": "modeldeployment", "kubeforge.io/owner-name": "demo"}
ON_ITS_NODE = {"labelSelector": {"matchLabels": SELF}, "topologyKey": "kubernetes.io/hostname"}


def test_a_shared_claim_places_nothing() -> None:
    spec = md({"size": "1Gi"})
    job = build_cache_fill_job(spec, Settings())
    assert job is not None
    fill = job["spec"]["template"]["spec"]
    assert not {"affinity", "nodeSelector", "tolerations"} & set(fill)
    assert "affinity" not in build_triton_deployment(spec, Settings())["spec"]["template"]["spec"]
    # nor does a user's claim, whatever accessMode says (it is the operator's claim's field)
    user = md({"claimName": "shared", "accessMode": "ReadWriteOnce"})
    assert "affinity" not in build_triton_deployment(user, Settings())["spec"]["template"]["spec"]


def test_a_read_write_once_claim_keeps_every_replica_on_one_node() -> None:
    user_affinity = {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "cache-warmer"}}, "topologyKey": "zone"}
            ]
        }
    }
    spec = md(
        {"size": "1Gi", "accessMode": "ReadWriteOnce"},
        gpu={"count": 1, "product": "NVIDIA-H100-80GB-HBM3"},
        placement={"affinity": user_affinity, "priorityClassName": "serving"},
    )
    pod = build_triton_deployment(spec, Settings())["spec"]["template"]["spec"]
    required = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required == [
        *user_affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
        ON_ITS_NODE,
    ]
    # the serving pods' labels match their own term (the scheduler lets the first one go anywhere)
    assert (
        SELF.items()
        <= build_triton_deployment(spec, Settings())["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pod["affinity"]["nodeAffinity"]  # the GPU product is still required

    job = build_cache_fill_job(spec, Settings())
    assert job is not None
    fill = job["spec"]["template"]["spec"]
    # where the serving pods can run: their node affinity and tolerations, not their priority
    assert fill["affinity"]["nodeAffinity"] == pod["affinity"]["nodeAffinity"]
    assert fill["tolerations"] == pod["tolerations"]
    assert "priorityClassName" not in fill
    # beside them when they run; their own requirement stays theirs
    assert fill["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == [
        {"weight": 100, "podAffinityTerm": ON_ITS_NODE}
    ]
    assert (
        fill["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        == (user_affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"])
    )


def test_a_read_write_once_fill_without_a_gpu_product_goes_to_a_gpu_node() -> None:
    spec = md({"size": "1Gi", "accessMode": "ReadWriteOnce"}, gpu={"count": 1})
    job = build_cache_fill_job(spec, Settings())
    assert job is not None
    terms = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "Exists"}]}]
    # on CPU the serving pods go anywhere, and so does the fill (beside them if it can)
    cpu = build_cache_fill_job(md({"size": "1Gi", "accessMode": "ReadWriteOnce"}), Settings())
    assert cpu is not None
    assert set(cpu["spec"]["template"]["spec"]["affinity"]) == {"podAffinity"}
