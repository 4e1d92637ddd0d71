"""The cache holds what the API server holds: a late write response never brings back a deleted object."""

from __future__ import annotations

from typing import Any

from kubeforge.controllers.cache import ObjectCache


def _svc(uid: str, rv: str) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": "s", "namespace": "ns", "uid": uid, "resourceVersion": rv},
    }


def test_a_write_response_after_the_deleted_event_is_ignored() -> None:
    cache = ObjectCache()
    cache.upsert("Service", _svc("a", "5"))
    cache.deleted("Service", _svc("a", "7"))
    cache.upsert("Service", _svc("a", "6"))  # the response of a write that raced the deletion
    assert cache.get("Service", "ns", "s") is None


def test_an_object_recreated_under_the_same_name_is_cached() -> None:
    cache = ObjectCache()
    cache.upsert("Service", _svc("a", "5"))
    cache.deleted("Service", _svc("a", "7"))
    cache.upsert("Service", _svc("b", "9"))
    assert cache.get("Service", "ns", "s")["metadata"]["uid"] == "b"  # type: ignore[index]


def test_a_late_deleted_event_of_the_old_object_keeps_its_successor() -> None:
    cache = ObjectCache()
    cache.upsert("Service", _svc("b", "9"))  # our create, cached from its response
    cache.deleted("Service", _svc("a", "7"))  # the predecessor's DELETED event, arriving later
    assert cache.get("Service", "ns", "s")["metadata"]["uid"] == "b"  # type: ignore[index]


def test_a_relist_that_misses_an_object_forgets_it_for_good() -> None:
    cache = ObjectCache()
    cache.upsert("Service", _svc("a", "5"))
    _, removed = cache.replace("Service", None, [], "10")
    assert [o["metadata"]["uid"] for o in removed] == ["a"]
    cache.upsert("Service", _svc("a", "6"))
    assert cache.get("Service", "ns", "s") is None
