"""A stand-in kubelet for the model cache's fill pods: their own command, run locally, for real.

kwok runs no containers. `FillPods` follows the fill Job pods of a namespace (label
`app.kubernetes.io/component=model-cache`): for each pod that kwok reports Running it runs the pod's
own `kubeforge fill-cache` container with this Python (kubeforge.testing.triton_pod), with

- its environment as the kubelet would give it: `value`s as they are, `envFrom` Secrets (with their
  prefix) and `secretKeyRef`s resolved from the Secret in the API server (an optional key that is
  absent is left out, as a kubelet does);
- each claim it mounts mapped to `<claims_root>/<claim>`, so the serving pods' stand-ins
  (`PodServers`) read the same folder;
- its terminationMessagePath mapped to a local file.

Then it annotates the pod with the real exit code and termination message
(`sim.kubeforge.io/exit-code`, `sim.kubeforge.io/message`), and kwok's `pod-exit` stage terminates
the container with them, as a kubelet would report (with FallbackToLogsOnError, the log's tail when
a failed container wrote no message). The Job controller, the operator and the status are real.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.kube import Kubectl
from kubeforge.api.modeldeployment import ModelDeployment
from kubeforge.builders.cache import cache_claim_name, model_cache_key
from kubeforge.testing.triton_pod import run_init_container

log = logging.getLogger(__name__)
SELECTOR = "app.kubernetes.io/component=model-cache"
EXIT_CODE = "sim.kubeforge.io/exit-code"
MESSAGE = "sim.kubeforge.io/message"
LOG_TAIL_LINES = 80  # what the kubelet keeps of a log for FallbackToLogsOnError


@dataclass(frozen=True)
class FillRun:
    pod: str
    exit_code: int
    message: str
    log: str


@dataclass
class FillPods:
    kubectl: Kubectl
    namespace: str
    claims_root: Path
    work_dir: Path
    poll_seconds: float = 0.5
    runs: list[FillRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # while set, Running fill pods are left running (a fill in progress)
    hold: threading.Event = field(default_factory=threading.Event)
    _handled: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> FillPods:
        self._thread = threading.Thread(target=self._loop, name=f"fill pods {self.namespace}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.hold.is_set():
                    self._sync()
            except Exception as err:  # the loop must outlive one bad poll; the test reads `errors`
                self.errors.append(repr(err))
                log.exception("fill pods: sync failed")
            self._stop.wait(self.poll_seconds)

    def _sync(self) -> None:
        pods = self.kubectl.json("get", "pods", "-l", SELECTOR, namespace=self.namespace)["items"]
        for pod in pods:
            meta = pod["metadata"]
            running = (pod.get("status") or {}).get("phase") == "Running"
            if not running or meta.get("deletionTimestamp") or meta["name"] in self._handled:
                continue
            if EXIT_CODE in (meta.get("annotations") or {}):
                continue
            self._handled.add(meta["name"])
            self.runs.append(self._run(pod))

    def _secret(self, name: str, cache: dict[str, dict[str, str] | None]) -> dict[str, str] | None:
        """The Secret's data, decoded; None when it does not exist."""
        if name not in cache:
            secret = self.kubectl("get", "secret", name, "-o", "json", namespace=self.namespace, check=False)
            data = (json.loads(secret.stdout).get("data") or {}) if secret.returncode == 0 else None
            cache[name] = None if data is None else {k: base64.b64decode(v).decode() for k, v in data.items()}
        return cache[name]

    def _run(self, pod: dict[str, Any]) -> FillRun:
        name = pod["metadata"]["name"]
        spec = pod["spec"]
        (container,) = spec["containers"]
        secrets: dict[str, dict[str, str] | None] = {}
        env: dict[str, str] = {}
        # as a kubelet: envFrom first, then env (which wins); a Secret that is missing kept the pod
        # from starting (e2e/secretrefs.py and kwok's pod-config-error stage), so it is here
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef")
            if ref is not None:
                data = self._secret(ref["name"], secrets) or {}
                env.update({source.get("prefix", "") + k: v for k, v in data.items()})
        for entry in container.get("env") or []:
            ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
            if ref is not None:
                value = (self._secret(ref["name"], secrets) or {}).get(ref["key"])
                if value is None and not ref.get("optional"):
                    raise RuntimeError(f"{name}: secret {ref['name']} has no key {ref['key']}")
                if value is not None:
                    env[entry["name"]] = value
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        paths: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            claim = (volumes.get(mount["name"]) or {}).get("persistentVolumeClaim", {}).get("claimName")
            if claim:
                paths[mount["mountPath"]] = self.claims_root / claim
                (self.claims_root / claim).mkdir(parents=True, exist_ok=True)
        termination = self.work_dir / name / "termination-log"
        termination.parent.mkdir(parents=True, exist_ok=True)
        paths[container.get("terminationMessagePath", "/dev/termination-log")] = termination
        started = time.monotonic()
        done = run_init_container(container, paths=paths, env=env)
        output = done.stdout + done.stderr
        message = termination.read_text() if termination.exists() else ""
        if (
            not message
            and done.returncode != 0
            and container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            message = "\n".join(output.splitlines()[-LOG_TAIL_LINES:])
        log.info("fill pods: %s exited %d after %.1fs", name, done.returncode, time.monotonic() - started)
        self.kubectl(
            "annotate",
            "pod",
            name,
            f"{EXIT_CODE}={done.returncode}",
            f"{MESSAGE}={message}",
            namespace=self.namespace,
        )
        return FillRun(name, done.returncode, message, output)

    def wait_for_runs(self, count: int, timeout: float = 120) -> list[FillRun]:
        deadline = time.monotonic() + timeout
        while len(self.runs) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.runs)}/{count} fill runs after {timeout}s; {self.errors}")
            time.sleep(0.2)
        return self.runs


def claim_and_key(body: dict[str, Any]) -> tuple[str, str]:
    """The model cache's claim and key for a ModelDeployment body (applied or not): where its fill
    pod writes and what the serving pods read."""
    md = ModelDeployment.model_validate({**body, "metadata": {**body["metadata"], "uid": "x"}})
    claim, key = cache_claim_name(md), model_cache_key(md)
    assert claim is not None and key is not None
    return claim, key
