"""The model.json Kubeforge renders for Triton's vLLM backend is valid to vLLM itself.

The real vllm package (the version in tests/llm/vllm-env.sh, in its own environment under
~/.cache/kubeforge/tools: never a dependency of the project) checks every model.json that the
operator renders for the examples and for the samples below, the way Triton's vLLM backend
reads it (tests/llm/vllm_check.py). First, the checker proves it can fail.

Installed on first use (about 2 minutes, 3.5 GB next to the per-machine torch); a failed install
fails these tests, it never skips them.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeforge.api.modeldeployment import TYPED_ENGINE_ARGS, ModelDeployment, ModelFormat
from kubeforge.builders.modeldeployment import build_triton_deployment
from kubeforge.settings import Settings
from kubeforge.triton.repository import PLAN_ENV, assemble_repository, parse_plan
from tests.llm.conftest import CHECK_TIMEOUT_S, INSTALL_TIMEOUT_S, run_in_vllm

HERE = Path(__file__).resolve().parent
CHECKER = HERE / "vllm_check.py"
EXAMPLES = HERE.parents[1] / "examples"

# The first test of the module waits for the install (a cold machine: minutes).
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_S + CHECK_TIMEOUT_S)


def run_checker(
    python: Path, *args: str | Path, batch: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_in_vllm(
        python,
        CHECKER,
        [*map(str, args), *(["--batch"] if batch is not None else [])],
        json.dumps(batch) if batch is not None else None,
    )


def report(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The checker's verdict per input: "OK", or the errors after "FAIL <label>: "."""
    verdicts = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition(" ")
        if status == "OK":
            verdicts[rest] = "OK"
        elif status == "FAIL":
            label, _, errors = rest.partition(": ")
            verdicts[label] = errors
    return verdicts


# -- the checker fails, naming the field -----------------------------------------------------------

GOOD = {
    "model": "Qwen/Qwen2.5-7B-Instruct",
    "dtype": "bfloat16",
    "quantization": "fp8",
    "enable_prefix_caching": True,
}
# label -> (model.json, what the error must name)
BAD: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "unknown-key": ({**GOOD, "bogus_key": 1}, ("bogus_key",)),
    "dtype-fp7": ({**GOOD, "dtype": "fp7"}, ("--dtype", "'fp7'")),
    "bad-quantization": ({**GOOD, "quantization": "int3-magic"}, ("quantization", "int3-magic")),
    "tp-not-an-int": ({**GOOD, "tensor_parallel_size": "four"}, ("tensor_parallel_size",)),
    "tp-a-string": ({**GOOD, "tensor_parallel_size": "4"}, ("tensor_parallel_size", "'4' (str)")),
    "flag-as-a-string": ({**GOOD, "enable_prefix_caching": "false"}, ("--enable-prefix-caching", "'false'")),
    "lora-rank-not-a-choice": ({**GOOD, "enable_lora": True, "max_lora_rank": 7}, ("--max-lora-rank", "7")),
}


@pytest.fixture(scope="module")
def bad_inputs(
    vllm_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One checker run over every bad case, the good control, and a LoRA model.json without multi_lora.json."""
    lora_json = tmp_path_factory.mktemp("lora") / "model.json"
    lora_json.write_text(json.dumps({**GOOD, "enable_lora": True}))
    batch = {"good": GOOD, **{label: fields for label, (fields, _) in BAD.items()}}
    return run_checker(vllm_python, lora_json, batch=batch), lora_json


def test_the_checker_passes_a_valid_model_json_and_fails_the_run_on_any_bad_one(
    bad_inputs: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, _ = bad_inputs
    assert report(result).get("good") == "OK", result.stdout + result.stderr
    assert result.returncode == 1, result.stdout + result.stderr


@pytest.mark.parametrize("label", sorted(BAD))
def test_vllm_refuses_a_bad_model_json_naming_the_field(
    label: str, bad_inputs: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    result, _ = bad_inputs
    errors = report(result).get(label)
    assert errors not in (None, "OK"), result.stdout + result.stderr
    for needle in BAD[label][1]:
        assert needle in errors, errors


def test_lora_without_multi_lora_json_is_refused_as_the_backend_would(
    bad_inputs: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, lora_json = bad_inputs
    errors = report(result).get(str(lora_json))
    assert errors is not None and "enable_lora" in errors and "multi_lora.json" in errors, result.stdout


# -- every model.json the operator renders is valid ------------------------------------------------


def _llm_sample(
    name: str, llm: dict[str, Any], gpu_count: int, product: str = "NVIDIA-H100-80GB-HBM3"
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "models": [{"name": name, "format": "vllm", "source": f"pvc://models/{name}", "llm": llm}],
        "gpu": {"count": gpu_count, "product": product},
    }
    if any(a["source"].startswith("s3://") for a in llm.get("loraAdapters", [])):
        spec["storage"] = {"secretName": "adapter-credentials"}
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


# Specs beyond the examples: every typed field of `llm`, LoRA, the escape hatch with each JSON type.
SPEC_SAMPLES: list[dict[str, Any]] = [
    _llm_sample("defaults", {}, 1),
    _llm_sample(
        "every-field",
        {
            "tensorParallelSize": 2,
            "maxModelLen": 8192,
            "gpuMemoryUtilization": 0.85,
            "dtype": "float16",
            "quantization": "awq",
            "enablePrefixCaching": False,
            "maxNumSeqs": 64,
        },
        2,
    ),
    _llm_sample(
        "lora",
        {
            "dtype": "auto",
            "loraAdapters": [
                {"name": "sql", "source": "pvc://adapters/sql"},
                {"name": "chat", "source": "s3://adapters/chat"},
            ],
            "engineArgs": {"max_lora_rank": 64, "max_loras": 2},
        },
        1,
    ),
    _llm_sample(
        "escape-hatch",
        {
            "quantization": "fp8",
            "engineArgs": {
                "enforce_eager": True,
                "kv_cache_dtype": "fp8",
                "swap_space": 8,
                "seed": 0,
                "hf_overrides": {"rope_theta": 1000000.0},
                "trust_remote_code": False,
            },
        },
        4,
    ),
]


def vllm_deployments() -> Iterator[tuple[str, ModelDeployment]]:
    """Every ModelDeployment with a vLLM model: from examples/*.yaml, then the samples above."""
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if not doc or doc.get("kind") != "ModelDeployment":
                continue
            if any(m.get("format") == ModelFormat.VLLM.value for m in doc["spec"]["models"]):
                yield f"{path.name}#{index}", ModelDeployment.model_validate(_with_uid(doc))
    for doc in SPEC_SAMPLES:
        yield f"sample:{doc['metadata']['name']}", ModelDeployment.model_validate(_with_uid(doc))


def _with_uid(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "metadata": {**doc["metadata"], "uid": "u-1"}}


def _plan_text(obj: Any) -> str:
    """The value of the init container's plan, wherever the built object's pod template holds it."""
    if isinstance(obj, dict):
        if obj.get("name") == PLAN_ENV and isinstance(obj.get("value"), str):
            return obj["value"]
        children = obj.values()
    elif isinstance(obj, list):
        children = obj
    else:
        children = []
    for child in children:
        try:
            return _plan_text(child)
        except LookupError:
            pass
    raise LookupError(PLAN_ENV)


def render_model_jsons(md: ModelDeployment, root: Path) -> list[Path]:
    """The operator's own path: its Deployment's plan, laid out by the init container's code.

    The sources are swapped for small local Hugging Face folders (the fetch is not under test);
    model.json, multi_lora.json and config.pbtxt are written by `assemble_repository` itself.
    """
    plan = parse_plan(_plan_text(build_triton_deployment(md, Settings())))
    pvc = root / "pvc"
    local = []
    for model in plan:
        weights = pvc / "weights" / model.name
        weights.mkdir(parents=True)
        (weights / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
        lora = None
        if model.lora:
            lora = {}
            for adapter in model.lora:
                (pvc / "lora" / model.name / adapter).mkdir(parents=True)
                (pvc / "lora" / model.name / adapter / "adapter_config.json").write_text("{}")
                lora[adapter] = f"pvc://lora/{model.name}/{adapter}"
        local.append(dataclasses.replace(model, source=f"pvc://weights/{model.name}", lora=lora))
    out = root / "models"
    assert assemble_repository(local, out, pvc, {}) == []
    return [out / m.name / "1" / "model.json" for m in plan if m.engine_args is not None]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("rendered")
    return {label: render_model_jsons(md, root / str(i)) for i, (label, md) in enumerate(vllm_deployments())}


def test_the_examples_and_samples_render_vllm_models(rendered: dict[str, list[Path]]) -> None:
    labels = set(rendered)
    assert {"llm-vllm.yaml#0", "llm-multinode.yaml#0"} <= labels, labels
    assert all(rendered.values()), rendered  # each has at least one model.json
    # every engine argument the `llm` block types is among what vLLM checks below
    keys = {key for paths in rendered.values() for path in paths for key in json.loads(path.read_text())}
    assert set(TYPED_ENGINE_ARGS) <= keys, set(TYPED_ENGINE_ARGS) - keys


def test_vllm_accepts_every_rendered_model_json(vllm_python: Path, rendered: dict[str, list[Path]]) -> None:
    paths = [path for paths in rendered.values() for path in paths]
    result = run_checker(vllm_python, *paths)
    verdicts = report(result)
    failed = {path: verdict for path, verdict in verdicts.items() if verdict != "OK"}
    assert not failed, "\n".join(
        f"{path}:\n  {json.loads(Path(path).read_text())}\n  {v}" for path, v in failed.items()
    )
    assert set(verdicts) == {str(path) for path in paths}, result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
