"""Output URIs -> local paths: where the trainer may write the exported model repository.

Supported: a local path (``/models/repo``, ``file:///models/repo``) and ``pvc://<claim>/<path>``, which the
operator mounts at ``$KUBEFORGE_PVC_ROOT/<claim>`` (default ``/mnt/pvc``). Object stores (``s3://``,
``gs://``) are refused up front, before any training time is spent.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit


class UnsupportedOutputError(ValueError):
    """The output URI names a location the trainer cannot write."""


def resolve_output_path(uri: str, pvc_root: Path) -> Path:
    """The local directory behind ``uri``; raises ``UnsupportedOutputError`` for what cannot be written."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        path = parts.path if scheme == "file" else uri
        if not path:
            raise UnsupportedOutputError(f"output URI {uri!r}: empty path")
        return Path(path).absolute()
    if scheme == "pvc":
        claim = parts.netloc
        if not claim:
            raise UnsupportedOutputError(f"output URI {uri!r}: expected pvc://<claim>/<path>")
        relative = PurePosixPath(parts.path.lstrip("/"))
        if ".." in relative.parts:
            raise UnsupportedOutputError(f"output URI {uri!r}: '..' would leave the claim")
        return pvc_root / claim / relative
    raise UnsupportedOutputError(
        f"output URI {uri!r}: scheme {scheme}:// is not supported by the trainer; "
        "export to a local path or pvc://<claim>/<path> (mounted under KUBEFORGE_PVC_ROOT)"
    )
