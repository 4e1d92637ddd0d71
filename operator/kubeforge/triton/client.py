"""Read a running Triton server's readiness and model states, for the operator's status."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from tritonclient.http.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from kubeforge.api.modeldeployment import ModelState

UNKNOWN_STATE = "Unknown"


@dataclass(frozen=True)
class TritonObservation:
    """What one server said, or why it said nothing."""

    url: str
    reachable: bool
    ready: bool = False
    models: tuple[ModelState, ...] = ()
    error: str | None = None

    def model(self, name: str) -> ModelState | None:
        """The state of a model by name (its newest version listed), or None when the server lists none."""
        found = [m for m in self.models if m.name == name]
        return found[-1] if found else None


def _client_address(http_url: str) -> tuple[str, bool]:
    """tritonclient's `host:port` form of a URL, and whether it is https."""
    split = urllib.parse.urlsplit(http_url if "://" in http_url else f"http://{http_url}")
    return split.netloc, split.scheme == "https"


def model_state(entry: Mapping[str, Any]) -> ModelState:
    """A ModelState from one entry of Triton's repository index."""
    return ModelState(
        name=str(entry.get("name", "")),
        # in explicit mode a model never asked to load is listed without a state
        state=str(entry.get("state") or UNKNOWN_STATE),
        version=str(entry["version"]) if entry.get("version") else None,
        reason=str(entry["reason"]) if entry.get("reason") else None,
    )


def _sort_key(state: ModelState) -> tuple[str, int]:
    version = state.version or ""
    return state.name, int(version) if version.isdigit() else -1


async def _observe(http_url: str, timeout: float) -> TritonObservation:
    address, ssl = _client_address(http_url)
    client = InferenceServerClient(address, conn_timeout=timeout, ssl=ssl)
    try:
        ready = await client.is_server_ready()
        try:
            # POST /v2/repository/index: every model in the repository with its state, loaded or not
            # https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_model_repository.md
            index = await client.get_model_repository_index()
        except (InferenceServerException, ValueError) as exc:  # an error status, or a body that is not JSON
            return TritonObservation(http_url, reachable=True, ready=ready, error=f"repository index: {exc}")
    finally:
        await client.close()
    if not isinstance(index, list) or not all(isinstance(entry, dict) for entry in index):
        return TritonObservation(
            http_url, reachable=True, ready=ready, error="repository index: not a list of models"
        )
    states = sorted((model_state(entry) for entry in index), key=_sort_key)
    return TritonObservation(http_url, reachable=True, ready=ready, models=tuple(states))


async def model_states(http_url: str, timeout: float = 5.0) -> TritonObservation:
    """Server readiness and the repository index of the Triton server at http_url.

    Never raises for a server that is down, slow or answers nonsense: the observation then says
    `reachable=False` with the error. `http_url` is `http://host:port` (or `host:port`).
    """
    try:
        return await asyncio.wait_for(_observe(http_url, timeout), timeout)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        # OSError covers refused connections and unknown hosts, TimeoutError a server that does not answer
        return TritonObservation(http_url, reachable=False, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
