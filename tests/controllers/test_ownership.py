"""Ownership and convergence: only our own children are written, and a removed field is applied away."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubeforge.controllers.context import ChildConflict, Context, PredecessorChild, check_ownership
from kubeforge.k8s.resources import SERVICE
from kubeforge.k8s.semantic import DESIRED_HASH_ANNOTATION, desired_hash, stamped, up_to_date
from kubeforge.settings import Settings

OWNER_UID = "0f6c2b4e-1111-4e4e-8888-000000000001"


def _service(
    uid: str | None = OWNER_UID, kind: str = "ModelDeployment", name: str = "resnet50"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "resnet50", "namespace": "team-a", "labels": {"app": "triton"}}
    if uid is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": "kubeforge.io/v1alpha1",
                "kind": kind,
                "name": name,
                "uid": uid,
                "controller": True,
            }
        ]
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {"selector": {"app": "triton"}}}


def _live(desired: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What the API server returns for an applied object: ours plus defaults and metadata of its own."""
    live = stamped(desired)
    live["metadata"] = {**live["metadata"], "uid": "child-uid", "resourceVersion": "7", **extra}
    live["spec"] = {**live["spec"], "clusterIP": "10.0.0.7", "type": "ClusterIP"}
    return live


# -- convergence --------------------------------------------------------------------------------


def test_an_applied_child_is_up_to_date() -> None:
    desired = _service()
    assert up_to_date(stamped(desired), _live(desired))


def test_a_field_removed_from_the_desired_object_is_not_up_to_date() -> None:
    before = _service()
    before["spec"]["sessionAffinity"] = "ClientIP"
    live = _live(before)
    after = _service()  # the same child without the field
    assert not up_to_date(stamped(after), live)  # a subset test alone would call it up to date


def test_a_hand_edit_of_a_field_we_set_is_not_up_to_date() -> None:
    desired = _service()
    live = _live(desired)
    live["spec"]["selector"] = {"app": "other"}
    assert not up_to_date(stamped(desired), live)


def test_a_child_without_our_hash_is_applied_once() -> None:
    desired = _service()
    live = _live(desired)
    del live["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
    assert not up_to_date(stamped(desired), live)


def test_the_hash_ignores_key_order_and_its_own_annotation() -> None:
    desired = _service()
    reordered = {"spec": desired["spec"], "metadata": dict(reversed(desired["metadata"].items())), **desired}
    assert desired_hash(desired) == desired_hash(reordered) == desired_hash(stamped(desired))


# -- ownership ----------------------------------------------------------------------------------


def test_absent_or_our_own_child_may_be_written() -> None:
    check_ownership(_service(), None)
    check_ownership(_service(), _live(_service()))


@pytest.mark.parametrize(
    ("live", "words"),
    [
        (_service(uid=None), "not controlled by any owner"),
        (_service(uid="uid-of-a-trainingjob", kind="TrainingJob"), "controlled by TrainingJob resnet50"),
        (_service(uid="uid-of-another-md", name="other"), "controlled by ModelDeployment other"),
    ],
    ids=["user-object", "other-kind", "other-owner"],
)
def test_a_name_taken_by_another_object_is_a_conflict_that_names_it(live: dict[str, Any], words: str) -> None:
    with pytest.raises(ChildConflict) as err:
        check_ownership(_service(), live)
    assert "Service team-a/resnet50 already exists" in str(err.value)
    assert words in str(err.value)


def test_the_child_of_a_deleted_namesake_waits_for_the_garbage_collector() -> None:
    with pytest.raises(PredecessorChild):
        check_ownership(_service(), _service(uid="uid-of-a-deleted-modeldeployment"))


class RecordingKube:
    """The Kube facade's write surface, recording calls; `objects` is what the API server holds."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects
        self.calls: list[tuple[str, str, Any]] = []

    async def get(self, resource: Any, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", name, None))
        return self.objects.get(name)

    async def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        self.calls.append(("apply", obj["metadata"]["name"], force))
        return _live(obj)

    async def delete(self, resource: Any, namespace: str, name: str, *, uid: str) -> bool:
        self.calls.append(("delete", name, uid))
        return True


def _context(kube: RecordingKube) -> Context:
    return Context(kube=kube, settings=Settings())  # type: ignore[arg-type]


def test_ensure_never_writes_over_a_user_object() -> None:
    kube = RecordingKube({"resnet50": _live(_service(uid=None))})
    ctx = _context(kube)
    with pytest.raises(ChildConflict):
        asyncio.run(ctx.ensure(_service()))
    assert [c[0] for c in kube.calls] == ["get"]  # read, never applied


def test_ensure_creates_without_force_and_updates_with_force() -> None:
    kube = RecordingKube({})
    ctx = _context(kube)
    asyncio.run(ctx.ensure(_service()))
    changed = _service()
    changed["spec"]["sessionAffinity"] = "ClientIP"
    asyncio.run(ctx.ensure(changed))
    asyncio.run(ctx.ensure(changed))  # unchanged now: no call at all
    assert kube.calls == [
        ("get", "resnet50", None),
        ("apply", "resnet50", False),
        ("apply", "resnet50", True),
    ]


def test_ensure_absent_deletes_only_our_child_with_its_uid() -> None:
    kube = RecordingKube({})
    ctx = _context(kube)
    ctx.cache.upsert("Service", _live(_service(uid=None)))
    asyncio.run(ctx.ensure_absent(SERVICE, "team-a", "resnet50", OWNER_UID))
    assert kube.calls == []  # a user's Service of that name is not ours to delete
    ctx.cache.upsert(
        "Service",
        {**_live(_service()), "metadata": {**_live(_service())["metadata"], "resourceVersion": "8"}},
    )
    asyncio.run(ctx.ensure_absent(SERVICE, "team-a", "resnet50", OWNER_UID))
    assert kube.calls == [("delete", "resnet50", "child-uid")]
