"""The images `make images` builds (hack/images.sh), run from their root filesystems as a kubelet would.

A pod's container becomes a runc container (a real OCI runtime, Debian's runc) over the image's root
filesystem as buildah mounts it: the container's command and args over the image's entrypoint and cmd,
its user, group and fsGroup, a read-only root when its securityContext says so, no capabilities and no
privilege escalation when it drops them, its volumes (emptyDir: a tmpfs, or a host folder the test
reads; a claim: a host folder), its env over the image's, and the ServiceAccount token where the
pod mounts one. The network is the host's (its loopback holds the local cluster), so the test gives a
server in the container free loopback ports.

    with mounted(image_name("operator")) as image:
        spec = from_pod(image, pod_spec, pod_spec["containers"][0], fields={...})
        with Container(spec, tmp_path / "c").running() as container: ...
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.cluster import REPO_ROOT
from e2e.net import http_status

IMAGES_SH = REPO_ROOT / "hack" / "images.sh"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
PATH_DEFAULT = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What runc's own `runc spec` masks and makes read-only, as container runtimes do for every pod.
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
]  # fmt: skip
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def image_name(which: str) -> str:
    """The name:tag `make images` gives the operator or trainer image."""
    return subprocess.run(
        [str(IMAGES_SH), "name", which], capture_output=True, text=True, check=True
    ).stdout.strip()


def buildah(*args: str) -> str:
    """buildah on the image store of hack/images.sh; its output, stripped."""
    result = subprocess.run([str(IMAGES_SH), "buildah", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def built(image: str) -> bool:
    try:
        buildah("inspect", "--type", "image", image)
    except RuntimeError:
        return False
    return True


@dataclass(frozen=True)
class Image:
    """A mounted image: its root filesystem and the config its Dockerfile set."""

    name: str
    rootfs: Path
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: dict[str, str]
    user: str
    working_dir: str

    def passwd_home(self, uid: int) -> str | None:
        for line in (self.rootfs / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) >= 6 and fields[2] == str(uid):
                return fields[5]
        return None


@contextmanager
def mounted(name: str) -> Iterator[Image]:
    """A working container of the image, mounted; removed (and its changes with it) on exit."""
    if not built(name):
        raise AssertionError(f"image {name} is not built: run `make images` (hack/images.sh build)")
    config = json.loads(buildah("inspect", "--type", "image", name))["OCIv1"]["config"]
    container = buildah("from", "--pull=never", "--name", f"kf-test-{uuid.uuid4().hex[:12]}", name)
    try:
        rootfs = Path(buildah("mount", container))
        env = dict(item.split("=", 1) for item in config.get("Env") or ())
        yield Image(
            name=name,
            rootfs=rootfs,
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
            env=env,
            user=config.get("User") or "0:0",
            working_dir=config.get("WorkingDir") or "/",
        )
    finally:
        buildah("rm", container)


@dataclass(frozen=True)
class Mount:
    destination: str
    source: Path | None  # None: a tmpfs
    read_only: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    """What runc runs: derived from a pod's container and the image by `from_pod`."""

    image: Image
    argv: list[str]
    env: dict[str, str]
    uid: int
    gid: int
    groups: list[int]
    cwd: str
    read_only_root: bool
    no_new_privileges: bool
    capabilities: list[str]
    mounts: list[Mount] = field(default_factory=list)


def _security(pod_spec: Mapping[str, Any], container: Mapping[str, Any], key: str) -> Any:
    value = (container.get("securityContext") or {}).get(key)
    return value if value is not None else (pod_spec.get("securityContext") or {}).get(key)


def _env(image: Image, container: Mapping[str, Any], fields: Mapping[str, str], uid: int) -> dict[str, str]:
    env = {"PATH": PATH_DEFAULT, **image.env}
    for entry in container.get("env") or ():
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        path = ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if path not in fields:
            raise ValueError(f"env {entry['name']}: {entry.get('valueFrom')} needs a value in `fields`")
        env[entry["name"]] = fields[path]
    # as the container runtime does: HOME from the image, else the user's passwd entry, else /
    env.setdefault("HOME", image.passwd_home(uid) or "/")
    return env


def _own(folder: Path, fs_group: int) -> None:
    """What the kubelet does to a volume of a pod with an fsGroup: group-owned by it, group-writable,
    setgid folders (so what the pod creates stays the group's)."""
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, -1, fs_group, follow_symlinks=False)
        if path.is_dir() and not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o2070)
        elif not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o060)


def _mounts(
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    volumes: Mapping[str, Path],
    fs_group: int | None,
) -> list[Mount]:
    declared = {v["name"]: v for v in pod_spec.get("volumes") or ()}
    mounts = []
    for mount in container.get("volumeMounts") or ():
        volume = declared[mount["name"]]
        source = volumes.get(mount["name"])
        if source is None and "emptyDir" not in volume:
            raise ValueError(f"volume {mount['name']} ({sorted(volume)}) needs a host folder in `volumes`")
        if source is not None and mount.get("subPath"):
            source = source / mount["subPath"]
            source.mkdir(parents=True, exist_ok=True)
        if source is not None and fs_group is not None and not mount.get("readOnly"):
            _own(source, fs_group)
        mounts.append(Mount(mount["mountPath"], source, bool(mount.get("readOnly"))))
    return mounts


def from_pod(
    image: Image,
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    fields: Mapping[str, str] | None = None,
    volumes: Mapping[str, Path] | None = None,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] | None = None,
    service_account: Path | None = None,
) -> ContainerSpec:
    """The pod's container as the kubelet would start it from `image`.

    `fields`: values of the env's fieldRefs (`metadata.name`, ...); `volumes`: host folders for
    volumes by name (needed for claims; an emptyDir without one is a tmpfs); `env` and `args`
    replace the container's (a test moves ports); `service_account`: a folder with token, ca.crt
    and namespace, mounted where the kubelet mounts the pod's token.
    """
    command = list(container.get("command") or image.entrypoint)
    arguments = list(
        args if args is not None else container.get("args") or ([] if "command" in container else image.cmd)
    )
    image_uid, _, image_gid = image.user.partition(":")
    uid = int(_security(pod_spec, container, "runAsUser") or image_uid or 0)
    gid = int(_security(pod_spec, container, "runAsGroup") or image_gid or 0)
    fs_group_value = (pod_spec.get("securityContext") or {}).get("fsGroup")
    fs_group = int(fs_group_value) if fs_group_value is not None else None
    drop = ((container.get("securityContext") or {}).get("capabilities") or {}).get("drop") or []
    mounts = _mounts(pod_spec, container, volumes or {}, fs_group)
    if service_account is not None:
        mounts.append(Mount(SERVICE_ACCOUNT_DIR, service_account, read_only=True))
    return ContainerSpec(
        image=image,
        argv=command + arguments,
        env=_env(image, container, fields or {}, uid) | dict(env or {}),
        uid=uid,
        gid=gid,
        groups=[fs_group] if fs_group is not None else [],
        cwd=container.get("workingDir") or image.working_dir,
        read_only_root=bool(_security(pod_spec, container, "readOnlyRootFilesystem")),
        no_new_privileges=_security(pod_spec, container, "allowPrivilegeEscalation") is False,
        capabilities=[]
        if "ALL" in drop
        else ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_SETUID", "CAP_SETGID"],
        mounts=mounts,
    )


def _runtime_config(spec: ContainerSpec) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=1g"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]  # fmt: skip
    for mount in spec.mounts:
        if mount.source is None:
            options = ["nosuid", "nodev", "mode=1777"]
            mounts.append(
                {"destination": mount.destination, "type": "tmpfs", "source": "tmpfs", "options": options}
            )
        else:
            options = ["rbind", "ro" if mount.read_only else "rw"]
            mounts.append(
                {
                    "destination": mount.destination,
                    "type": "bind",
                    "source": str(mount.source),
                    "options": options,
                }
            )
    capabilities = {kind: list(spec.capabilities) for kind in ("bounding", "effective", "permitted")}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": spec.uid, "gid": spec.gid, "additionalGids": spec.groups},
            "args": spec.argv,
            "env": [f"{k}={v}" for k, v in spec.env.items()],
            "cwd": spec.cwd,
            "capabilities": capabilities,
            "noNewPrivileges": spec.no_new_privileges,
        },
        "root": {"path": str(spec.image.rootfs), "readonly": spec.read_only_root},
        "hostname": "pod",
        "mounts": mounts,
        "linux": {
            # pid, ipc, uts and mount of its own; the host's network (the cluster is on its loopback)
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }


class Container:
    """One runc container; its output (stdout and stderr) goes to `<work>/output.log`."""

    def __init__(self, spec: ContainerSpec, work: Path) -> None:
        self.spec = spec
        self.work = work
        self.id = f"kf-{uuid.uuid4().hex[:12]}"
        self.log_file = work / "output.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _runc(self, *args: str) -> list[str]:
        return ["runc", "--root", str(self.work / "runc"), *args]

    def start(self) -> None:
        bundle = self.work / "bundle"
        bundle.mkdir(parents=True, exist_ok=True)
        for mount in self.spec.mounts:  # the mount points a read-only root cannot create
            target = self.spec.image.rootfs / mount.destination.lstrip("/")
            if not target.exists():
                target.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(_runtime_config(self.spec), indent=1))
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                self._runc("run", "--bundle", str(bundle), self.id),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"container {self.spec.argv} ran past {timeout}s:\n{self.log()[-4000:]}"
            ) from None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds, as the kubelet stops a container."""
        if self.process is None:
            return
        if self.process.poll() is None:
            subprocess.run(self._runc("kill", self.id, "TERM"), capture_output=True, check=False)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                subprocess.run(self._runc("kill", "--all", self.id, "KILL"), capture_output=True, check=False)
                self.process.wait(10)
        subprocess.run(self._runc("delete", "--force", self.id), capture_output=True, check=False)

    @contextmanager
    def started(self) -> Iterator[Container]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


def run(spec: ContainerSpec, work: Path, timeout: float = 300.0) -> tuple[int, str]:
    """Run to completion: (exit code, output)."""
    with Container(spec, work).started() as container:
        code = container.wait(timeout)
    return code, container.log()


def service_account_folder(token: str, ca: Path, namespace: str, folder: Path) -> Path:
    """What the kubelet projects for a pod's ServiceAccount: token, ca.crt, namespace."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "token").write_text(token)
    shutil.copyfile(ca, folder / "ca.crt")
    (folder / "namespace").write_text(namespace)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def wait_live(container: Container, url: str, timeout: float = 60.0) -> None:
    """Until `url` answers 200 (the container's liveness endpoint); fails with its log if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not container.running():
            raise AssertionError(f"the container exited:\n{container.log()[-6000:]}")
        if http_status(url) == 200:
            return
        time.sleep(0.3)
    raise AssertionError(f"{url} not live within {timeout}s:\n{container.log()[-6000:]}")
