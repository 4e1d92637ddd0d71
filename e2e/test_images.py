"""The images `make images` builds, proven by running them (e2e/images.py: runc over each image's root
filesystem, as the kubelet would run the pod's container).

- the chart's defaults and the examples name exactly the images that were built;
- the operator's release archives (OCI with gzip layers, `docker load`) name it and hold what they
  list, under 200 MB compressed, and its SBOM lists its Debian and Python packages;
- the trainer image runs the DDP example's worker pods (2 pods of 1 process, gloo on CPU) as the
  operator's Job builds them, to a checkpoint and an exported model;
- the operator image runs as the chart's Deployment runs it (uid 65532, read-only root, only /tmp
  writable, the ServiceAccount token the kubelet would mount) against a local cluster: it elects itself
  leader and reconciles the examples to Ready; and the init container it renders, run from the same
  image, lays out a model repository that a real tritonserver serves.

Under `make test` the images are built before e2e (hack/test.sh); a missing image fails, never skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tritonclient import http as httpclient

from e2e import images
from e2e.chart_support import Helm, one
from e2e.cluster import REPO_ROOT, Cluster, own_cluster
from e2e.kube import Kubectl, create_namespaces, wait_condition, wait_for
from e2e.net import free_ports, http_status
from e2e.storage import bound_claim
from kubeforge import __version__
from kubeforge.api import ModelDeployment
from kubeforge.api.trainingjob import TrainingJob
from kubeforge.builders.modeldeployment import build_triton_deployment
from kubeforge.builders.trainingjob import COMPLETION_INDEX, build_worker_job
from kubeforge.openai import TOKENIZER_CONFIG
from kubeforge.settings import Settings
from kubeforge.testing.openai_front import with_flag_values
from kubeforge.testing.triton import free_port
from kubeforge.testing.triton_pod import run_triton_container
from tests.trainer.runs import TRAINING_ARGS
from tests.triton.models import add_model_config, write_add_model

pytestmark = pytest.mark.e2e

EXAMPLES = REPO_ROOT / "examples"
RELEASE = "kubeforge"
NAMESPACE = "kubeforge-system"
POD_NAME = f"{RELEASE}-image-0"
SERVE_NS = "image-serve"
TRAIN_NS = "image-train"


def _example(name: str, kind: str) -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d and d["kind"] == kind)


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm.ensure(home=tmp_path_factory.mktemp("helm-home"))


def test_the_chart_and_the_examples_name_the_built_images(helm: Helm) -> None:
    operator, trainer = images.image_name("operator"), images.image_name("trainer")
    deployment = one(helm.template(), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == operator
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBEFORGE_HELPER_IMAGE"] == operator  # the init container of every ModelDeployment
    named = {
        doc["spec"]["image"]
        for path in EXAMPLES.glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "TrainingJob"
    }
    assert named == {trainer}
    assert images.built(operator) and images.built(trainer), "run `make images`"


# -- the release archives (`make images`) ----------------------------------------------------------

MAX_OPERATOR_PULL_BYTES = 200 * 1000**2  # the operator image's target, compressed


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_operator_archives_name_the_image_and_hold_what_they_list(tmp_path: Path) -> None:
    """`hack/images.sh release operator`: the OCI archive (gzip layers: what a registry stores and a
    node pulls), the `docker load` archive and the SBOM, checked as their readers read them."""
    name = images.image_name("operator")
    env = dict(os.environ, KUBEFORGE_IMAGES_OUT=str(tmp_path))
    subprocess.run([str(images.IMAGES_SH), "release", "operator"], env=env, check=True, timeout=600)
    base = tmp_path / f"kubeforge-operator-{__version__}"

    with tarfile.open(f"{base}.oci.tar") as oci:
        index = json.load(oci.extractfile("index.json"))  # type: ignore[arg-type]
        (entry,) = index["manifests"]
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == name

        def blob(digest: str) -> bytes:
            data = oci.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}").read()  # type: ignore[union-attr]
            assert _digest(data) == digest.removeprefix("sha256:"), digest
            return data

        manifest = json.loads(blob(entry["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        assert {layer["mediaType"] for layer in manifest["layers"]} == {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        for layer in manifest["layers"]:
            blob(layer["digest"])
    assert config["config"]["User"] == "65532:65532"
    assert (config["config"]["Entrypoint"], config["config"]["Cmd"]) == (["kubeforge"], ["run"])
    assert Path(f"{base}.oci.tar").stat().st_size < MAX_OPERATOR_PULL_BYTES

    with tarfile.open(f"{base}.docker.tar") as docker:
        (loaded,) = json.load(docker.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert loaded["RepoTags"] == [name]
        assert _digest(docker.extractfile(loaded["Config"]).read()) == loaded["Config"].removesuffix(".json")  # type: ignore[union-attr]
        members = set(docker.getnames())
        assert set(loaded["Layers"]) <= members
        assert len(loaded["Layers"]) == len(manifest["layers"])

    sbom = json.loads(Path(f"{base}.spdx.json").read_text())
    assert sbom["spdxVersion"].startswith("SPDX-2.")
    packages = {(p["name"], p.get("versionInfo")) for p in sbom["packages"]}
    assert ("kubeforge", __version__) in packages
    names = {n for n, _ in packages}
    assert {"kopf", "kubernetes", "tritonclient", "python3.11", "libc6"} <= names, sorted(names)


# -- the trainer image ------------------------------------------------------------------------------


def test_the_trainer_image_runs_the_ddp_example_to_a_checkpoint_and_an_export(tmp_path: Path) -> None:
    body = _example("train-then-serve.yaml", "TrainingJob")
    body["metadata"].update(namespace="team-a", uid="0000-uid", generation=1)
    body["spec"].pop("gpu")  # CPU: one process per pod, gloo
    body["spec"]["args"] = list(TRAINING_ARGS)
    tj = TrainingJob.model_validate(body)
    assert tj.spec.workers == 2
    pod_spec = build_worker_job(tj, 0, suspend=False)["spec"]["template"]["spec"]
    claims = {"checkpoint": tmp_path / "training-checkpoints", "output": tmp_path / "model-store"}
    for folder in claims.values():
        folder.mkdir()
    port = free_port()
    # the headless Service's DNS name is the cluster's: here every pod is on the host's loopback
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "PET_MASTER_ADDR": "127.0.0.1"}
    rendezvous |= {"MASTER_PORT": str(port), "PET_MASTER_PORT": str(port)}
    containers = []
    with images.mounted(images.image_name("trainer")) as image:
        assert pod_spec["containers"][0]["image"] == image.name
        for rank in (0, 1):
            spec = images.from_pod(
                image,
                pod_spec,
                pod_spec["containers"][0],
                fields={COMPLETION_INDEX: str(rank)},
                volumes=claims,
                env=rendezvous,
            )
            containers.append(images.Container(spec, tmp_path / f"worker-{rank}"))
        for container in containers:
            container.start()
        try:
            codes = [container.wait(240) for container in containers]
        finally:
            for container in containers:
                container.stop()
    logs = "\n".join(c.log() for c in containers)
    assert codes == [0, 0], logs[-6000:]
    assert spec.uid == 1000 and spec.groups == [1000]  # the pod's, not the image's 10001
    checkpoints = claims["checkpoint"] / tj.metadata.name
    progress = json.loads((checkpoints / "progress.json").read_text())
    assert progress["step"] == 40, progress
    assert (checkpoints / "ckpt-00000040.pt").is_file(), sorted(p.name for p in checkpoints.iterdir())
    exported = claims["output"] / "tabular" / "tabular-mlp"
    assert (exported / "config.pbtxt").is_file(), list(claims["output"].rglob("*"))
    assert list(exported.glob("1/*")), list(exported.rglob("*"))
    assert "[rank 1]" in logs and "gloo" in logs


# -- the operator image, against a cluster of this module's own -----------------------------------


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with own_cluster("run-images-", lambda: request.session.testsfailed) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def kubectl(cluster: Cluster) -> Kubectl:
    kubectl = cluster.kubectl()
    create_namespaces(kubectl, SERVE_NS, TRAIN_NS)
    return kubectl


@dataclass
class ImageOperator:
    container: images.Container
    liveness: str


@pytest.fixture(scope="module")
def image_operator(
    helm: Helm, cluster: Cluster, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ImageOperator]:
    """The chart installed with its defaults (but the model probe: the simulated pods' IPs are not on
    this machine), and its operator Deployment's container run from the built image."""
    helm.install(RELEASE, NAMESPACE, cluster.kubeconfig, values={"modelProbe": False})
    pod_spec = kubectl.json("get", "deployment", RELEASE, namespace=NAMESPACE)["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    assert pod_spec["automountServiceAccountToken"] is True
    work = tmp_path_factory.mktemp("operator")
    token = kubectl("create", "token", pod_spec["serviceAccountName"], "--duration=1h", namespace=NAMESPACE)
    account = images.service_account_folder(token.stdout.strip(), cluster.ca.cert, NAMESPACE, work / "sa")
    # the host's network is shared with the rest of the run: free loopback ports instead of 8080/8081
    liveness, metrics = free_ports(2)
    chart_args = [a for a in container["args"] if not a.startswith(("--liveness=", "--metrics-port="))]
    args = [
        *chart_args,
        f"--liveness=http://127.0.0.1:{liveness}/healthz",
        f"--metrics-port={metrics}",
        "--metrics-host=127.0.0.1",
    ]
    with images.mounted(container["image"]) as image:
        spec = images.from_pod(
            image,
            pod_spec,
            container,
            fields={"metadata.name": POD_NAME, "metadata.namespace": NAMESPACE},
            args=args,
            # what the kubelet tells every container about the API server's Service
            env={
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(cluster.ports.apiserver),
            },
            service_account=account,
        )
        assert (spec.uid, spec.gid, spec.read_only_root) == (65532, 65532, True)
        assert spec.capabilities == [] and spec.no_new_privileges
        assert [m.destination for m in spec.mounts if m.source is None] == ["/tmp"]  # the one writable path
        with images.Container(spec, work).started() as running:
            url = f"http://127.0.0.1:{liveness}/healthz"
            images.wait_live(running, url)
            yield ImageOperator(running, url)


def test_the_operator_image_leads_and_reconciles_the_examples(
    image_operator: ImageOperator, kubectl: Kubectl
) -> None:
    lease = wait_for(
        lambda: kubectl.json("get", "lease", f"{RELEASE}-leader", namespace=NAMESPACE)["spec"].get(
            "holderIdentity"
        ),
        timeout=30,
        message="a Lease holder",
    )
    assert lease == POD_NAME
    bound_claim(kubectl, SERVE_NS, "models")
    md = _example("model-deployment.yaml", "ModelDeployment")
    md["metadata"]["namespace"] = SERVE_NS
    kubectl.apply(json.dumps(md))
    ready = wait_condition(kubectl, "md", md["metadata"]["name"], "Ready", namespace=SERVE_NS, timeout=90)
    assert ready["status"]["observedGeneration"] == ready["metadata"]["generation"]

    bound_claim(kubectl, TRAIN_NS, "training-checkpoints")
    tj = _example("training-job.yaml", "TrainingJob")
    tj["metadata"]["namespace"] = TRAIN_NS
    tj["spec"]["podMetadata"] = {
        "annotations": {"sim.kubeforge.io/exit-code": "0", "sim.kubeforge.io/exit-after": "2s"}
    }
    kubectl.apply(json.dumps(tj))
    wait_condition(kubectl, "tj", tj["metadata"]["name"], "Succeeded", namespace=TRAIN_NS, timeout=120)

    log = image_operator.container.log()
    assert image_operator.container.running(), log[-4000:]
    for trouble in ("Read-only file system", "PermissionError", "Traceback", "Forbidden"):
        assert trouble not in log, log[-6000:]


def test_the_init_container_from_the_operator_image_lays_out_what_triton_serves(
    image_operator: ImageOperator, kubectl: Kubectl, tmp_path: Path
) -> None:
    bound_claim(kubectl, SERVE_NS, "models")
    md = {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "adder", "namespace": SERVE_NS},
        "spec": {
            "models": [
                {
                    "name": "add",
                    "source": "pvc://models/add",
                    "format": "python",
                    "config": add_model_config(),
                }
            ],
            "replicas": 1,
        },
    }
    kubectl.apply(json.dumps(md))
    wait_condition(kubectl, "md", "adder", "Ready", namespace=SERVE_NS, timeout=90)
    pod_spec = kubectl.json("get", "deployment", "adder", namespace=SERVE_NS)["spec"]["template"]["spec"]
    init = pod_spec["initContainers"][0]
    assert init["image"] == images.image_name("operator")
    pvc_root, repo = tmp_path / "claim", tmp_path / "repo"
    write_add_model(pvc_root / "add")
    repo.mkdir()
    repository = next(m["name"] for m in init["volumeMounts"] if m["mountPath"] == "/models")
    claims = [
        v["name"]
        for v in pod_spec["volumes"]
        if (v.get("persistentVolumeClaim") or {}).get("claimName") == "models"
    ]
    with images.mounted(init["image"]) as image:
        spec = images.from_pod(
            image, pod_spec, init, volumes={repository: repo, **{c: pvc_root for c in claims}}
        )
        code, output = images.run(spec, tmp_path / "init", timeout=120)
    assert code == 0, output
    assert "model repository ready: add" in output
    assert spec.uid == 1000 and spec.capabilities == []
    with run_triton_container(pod_spec["containers"][0], paths={"/models": repo}) as server:
        client = httpclient.InferenceServerClient(server.http_address)
        a = np.arange(8, dtype=np.float32).reshape(2, 4)
        b = np.full((2, 4), 0.5, dtype=np.float32)
        inputs = [httpclient.InferInput("A", [2, 4], "FP32"), httpclient.InferInput("B", [2, 4], "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        np.testing.assert_array_equal(client.infer("add", inputs).as_numpy("SUM"), a + b)
        client.close()


def test_the_openai_front_runs_from_the_operator_image(tmp_path: Path) -> None:
    """The `openai` container of a language model's server pods, from the operator image: it serves the
    model list it read from the repository (no Triton here: its health says so with a 503)."""
    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "lm", "namespace": "team-a", "uid": "u", "generation": 1},
            "spec": {"models": [{"name": "opticks", "source": "pvc://m/lm", "format": "python", "config": {"decoupled": True}}]},
        }
    )  # fmt: skip
    pod_spec = build_triton_deployment(md, Settings())["spec"]["template"]["spec"]
    container = next(c for c in pod_spec["containers"] if c["name"] == "openai")
    repository = tmp_path / "models"
    (repository / "opticks").mkdir(parents=True)
    (repository / "opticks" / TOKENIZER_CONFIG).write_text(json.dumps({"chat_template": "{{ messages }}"}))
    port, triton = free_ports(2)
    # the container's own arguments, on free loopback ports (the host's network is shared)
    local = {"--port": str(port), "--triton": f"http://127.0.0.1:{triton}"}
    args = ["--host", "127.0.0.1", *with_flag_values(container["args"], local)]
    with images.mounted(images.image_name("operator")) as image:
        spec = images.from_pod(image, pod_spec, container, args=args, volumes={"models": repository})
        with images.Container(spec, tmp_path / "front").started() as front:
            url = f"http://127.0.0.1:{port}"
            wait_for(
                lambda: http_status(f"{url}/health") == 503 or not front.running(),
                timeout=30,
                message="the front",
            )
            assert front.running(), front.log()
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
                assert [m["id"] for m in json.load(response)["data"]] == ["opticks"]
