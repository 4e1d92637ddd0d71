"""The model cache: a volume the models are fetched into once (a Job), then served from by every pod.

Layout on the claim, one folder per cache key (a hash of the claim and the model sources, so a
changed source fills a new folder while the pods keep serving the old one):

    <root>/<key>/models/<model>/...            the model's source directory, as fetched
    <root>/<key>/adapters/<model>/<adapter>/   a vLLM model's LoRA adapters
    <root>/<key>/COMPLETE                      JSON {bytes, digest, completedAt}: the fill is whole

`kubeforge fill-cache` fetches everything into `<root>/<key>.partial/`, computes the size and a
sha256 digest over every file's relative path and content, renames the folder to `<root>/<key>`
and only then writes COMPLETE (a temporary file, fsync, rename: it exists whole or not at all). A
fill that died half-way left no COMPLETE, and the next run starts over; the serving pods' init
container (`assemble-repository --cache-dir`) refuses a folder without it, so a partial fill is
never served. A run that finds COMPLETE does nothing.

The pure part (keys, the plan, paths) is imported by the builders; the program is `main`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from kubeforge.api.modeldeployment import ModelSpec
from kubeforge.redact import redact, redact_logs
from kubeforge.trainer.atomic import atomic_write_bytes, fsync_directory
from kubeforge.triton.sources import DEFAULT_PVC_ROOT, SourceError, fetch_source

log = logging.getLogger(__name__)

PLAN_ENV = "KUBEFORGE_CACHE_PLAN"
DEFAULT_ROOT = "/cache"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MARKER = "COMPLETE"
MODELS_DIR = "models"
ADAPTERS_DIR = "adapters"
PARTIAL_SUFFIX = ".partial"
KEY_LENGTH = 12
# what the kubelet keeps of a termination message (bytes); the summary is far shorter
TERMINATION_MESSAGE_LIMIT = 4096


class CacheError(RuntimeError):
    """The cache cannot be filled or used; the message says why."""


# ---------------------------------------------------------------------------------------------
# Pure: imported by the builders.


@dataclass(frozen=True)
class CacheEntry:
    """One source the fill fetches, and where it lands under the key's folder."""

    path: str  # e.g. models/resnet50
    source: str


def cache_entries(models: Sequence[ModelSpec]) -> list[CacheEntry]:
    """What a fill fetches: every model's source, and the sources of its LoRA adapters."""
    entries: list[CacheEntry] = []
    for m in models:
        entries.append(CacheEntry(f"{MODELS_DIR}/{m.name}", m.source))
        for adapter in m.adapters():
            entries.append(CacheEntry(f"{ADAPTERS_DIR}/{m.name}/{adapter.name}", adapter.source))
    return entries


def cache_key(models: Sequence[ModelSpec], claim: str) -> str:
    """Which fill serves these models from this claim: a short sha256 of the claim and every fetched
    (path, source). A model's config or engine settings are not in it: they are rendered when a pod
    starts, so changing them fetches nothing."""
    identity = [claim, [[e.path, e.source] for e in cache_entries(models)]]
    text = json.dumps(identity, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def fill_plan(models: Sequence[ModelSpec]) -> str:
    """The fill Job's plan (`KUBEFORGE_CACHE_PLAN`): JSON, deterministic."""
    entries = [{"path": e.path, "source": e.source} for e in cache_entries(models)]
    return json.dumps(entries, separators=(",", ":"), ensure_ascii=False)


def fill_args(key: str, root: str = DEFAULT_ROOT) -> list[str]:
    """The fill container's args after the `kubeforge` executable."""
    return ["fill-cache", "--root", root, "--key", key, "--termination-log", DEFAULT_TERMINATION_LOG]


def key_dir(root: str, key: str) -> str:
    """The folder of one fill in the container: `<root>/<key>`."""
    return f"{root.rstrip('/')}/{key}"


# ---------------------------------------------------------------------------------------------
# Reading a filled cache (the serving pods' init container).


def read_marker(directory: Path) -> dict[str, Any] | None:
    """The completion marker of a key's folder; None when the fill is not complete."""
    try:
        data = json.loads((directory / MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise CacheError(f"{directory / MARKER} is unreadable: {exc}") from exc
    return data if isinstance(data, dict) else None


def require_complete(directory: Path) -> dict[str, Any]:
    """The marker of a complete fill, or CacheError: a partial fill is never used."""
    marker = read_marker(directory)
    if marker is None:
        raise CacheError(
            f"the model cache {directory} is not complete (no {MARKER} marker): the fill Job has not "
            "finished, or it failed half-way; refusing to serve a partial cache"
        )
    return marker


# ---------------------------------------------------------------------------------------------
# The fill program.


def measure(directory: Path) -> tuple[int, str]:
    """(bytes, digest) of every file under directory but the marker: sha256 over each file's relative
    path, size and content, in path order, so the same files give the same digest wherever they are
    (a filled cache can be checked against its marker)."""
    digest = hashlib.sha256()
    total = 0

    def is_marker(path: Path) -> bool:  # the marker, or a write of it cut short (atomic_write's temp file)
        name = path.name
        return path.parent == directory and (name == MARKER or name.startswith(f".{MARKER}."))

    files = sorted(
        (p for p in directory.rglob("*") if p.is_file() and not p.is_symlink() and not is_marker(p)),
        key=lambda p: p.relative_to(directory).as_posix(),
    )
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(directory).as_posix()}\0{size}\0".encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        total += size
    return total, f"sha256:{digest.hexdigest()}"


def write_marker(directory: Path, summary: Mapping[str, Any]) -> None:
    """Write COMPLETE atomically: a temporary file, fsync, rename, fsync of the folder."""
    atomic_write_bytes(directory / MARKER, json.dumps(summary, sort_keys=True).encode())


def parse_plan(text: str) -> list[CacheEntry]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CacheError(f"{PLAN_ENV} is not JSON: {exc}") from exc
    if not isinstance(raw, list) or not raw:
        raise CacheError(f"{PLAN_ENV} must be a non-empty JSON list")
    entries = []
    for i, item in enumerate(raw):
        path, source = (item.get("path"), item.get("source")) if isinstance(item, dict) else (None, None)
        if not isinstance(path, str) or not isinstance(source, str) or not source:
            raise CacheError(f"{PLAN_ENV}[{i}] must have string fields path and source")
        parts = PurePosixPath(path).parts
        if not parts or parts[0] not in (MODELS_DIR, ADAPTERS_DIR) or ".." in parts or path.startswith("/"):
            raise CacheError(f"{PLAN_ENV}[{i}].path {path!r} is not under {MODELS_DIR}/ or {ADAPTERS_DIR}/")
        entries.append(CacheEntry(path, source))
    return entries


def prune(root: Path, key: str, keep: int = 1) -> list[str]:
    """Delete the complete fills of other keys but the `keep` most recent ones; returns their keys.

    The most recent other fill is the one the pods may still serve while they roll over to `key`;
    older ones serve nothing. Folders without a marker (a fill of another key in progress) are left
    alone. Only for a claim that holds this ModelDeployment's cache alone (the operator's own).
    """
    others = []
    for directory in root.iterdir():
        if directory.name == key or not directory.is_dir() or directory.name.endswith(PARTIAL_SUFFIX):
            continue
        try:
            marker = read_marker(directory)
        except CacheError:
            continue
        if marker is not None:
            others.append((str(marker.get("completedAt", "")), directory))
    others.sort(reverse=True)
    pruned = []
    for _, directory in others[keep:]:
        shutil.rmtree(directory)
        pruned.append(directory.name)
        log.info("pruned the earlier cache %s", directory.name)
    return pruned


def fill_cache(
    entries: Sequence[CacheEntry],
    root: Path,
    key: str,
    environ: Mapping[str, str],
    pvc_root: Path = Path(DEFAULT_PVC_ROOT),
    prune_others: bool = False,
) -> dict[str, Any]:
    """Fill `<root>/<key>` from the sources unless it is complete; returns the summary (COMPLETE's content).

    With `prune_others`, complete fills of other keys are deleted afterwards, but the most recent one.
    """
    final = root / key
    marker = read_marker(final)
    if marker is not None:
        log.info("cache %s is complete already (%s bytes): nothing to fetch", key, marker.get("bytes"))
        if prune_others:
            prune(root, key)
        return marker
    partial = root / f"{key}{PARTIAL_SUFFIX}"
    # a fill that died half-way: its files are not trusted, whichever step it reached
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.monotonic()
    for entry in entries:
        dest = partial / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        log.info("fetching %s into %s", entry.source, entry.path)
        try:
            fetch_source(entry.source, dest, pvc_root, environ)
        except SourceError as exc:
            shutil.rmtree(partial, ignore_errors=True)  # a failed fill leaves no half copy behind
            raise CacheError(f"{entry.path} from {redact(entry.source)}: {exc}") from exc
    size, digest = measure(partial)
    partial.rename(final)
    fsync_directory(root)
    summary = {
        "bytes": size,
        "digest": digest,
        "completedAt": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }
    write_marker(final, summary)
    log.info("cache %s complete: %d bytes, %s (%.1fs)", key, size, digest, time.monotonic() - started)
    if prune_others:
        prune(root, key)
    return summary


def _terminate(path: str | None, message: str) -> None:
    """Leave the outcome where the kubelet copies it into the pod's status (terminationMessagePath)."""
    if not path:
        return
    try:
        Path(path).write_text(message[:TERMINATION_MESSAGE_LIMIT])
    except OSError as exc:
        log.warning("cannot write the termination message to %s: %s", path, exc)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeforge fill-cache",
        description=f"Fetch the sources in ${PLAN_ENV} into <root>/<key> once, then mark it complete.",
    )
    parser.add_argument("--root", default=DEFAULT_ROOT, help="where the cache claim is mounted")
    parser.add_argument("--key", required=True, help="the cache key (the folder under root)")
    parser.add_argument("--pvc-root", default=DEFAULT_PVC_ROOT, help="where pvc:// source claims are mounted")
    parser.add_argument(
        "--termination-log", help="write the JSON summary (or the error) here, e.g. /dev/termination-log"
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="delete the complete fills of other keys but the most recent (a claim of this cache alone)",
    )
    return parser


def main(argv: list[str]) -> int:
    """`kubeforge fill-cache`: 0 when the cache is complete, 1 when a source failed, 2 on bad input."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact_logs()
    if not args.key or "/" in args.key or args.key.startswith("."):
        _terminate(args.termination_log, f"invalid cache key {args.key!r}")
        return 2
    try:
        entries = parse_plan(os.environ.get(PLAN_ENV, ""))
    except CacheError as exc:
        log.error("%s", exc)
        _terminate(args.termination_log, str(exc))
        return 2
    try:
        summary = fill_cache(
            entries, Path(args.root), args.key, os.environ, Path(args.pvc_root), prune_others=args.prune
        )
    except (CacheError, OSError) as exc:
        message = f"cache fill failed: {exc}"
        log.error("%s", message)
        _terminate(args.termination_log, message)
        return 1
    text = json.dumps(summary, sort_keys=True)
    print(text)
    _terminate(args.termination_log, text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
