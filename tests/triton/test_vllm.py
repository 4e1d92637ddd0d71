"""vLLM models: the engine arguments rendered from `llm`, and the repository Triton's vLLM backend loads.

The rendered model.json is also checked by vLLM itself (tests/llm/test_vllm_validation.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from kubeforge.api.modeldeployment import ModelDeployment, ModelSpec
from kubeforge.builders.cache import build_cache_fill_job
from kubeforge.builders.modeldeployment import build_triton_deployment, parallelism
from kubeforge.settings import Settings
from kubeforge.triton.config import render_model_config, vllm_engine_args, vllm_model_json
from kubeforge.triton.repository import assemble_repository, parse_plan, repository_plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def llm_model(**llm: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {"name": "qwen", "source": "pvc://models/qwen", "format": "vllm", "llm": llm}
    )


def example(name: str) -> ModelDeployment:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    doc["metadata"]["uid"] = "u-1"
    return ModelDeployment.model_validate(doc)


def test_defaults_resolve_against_the_pod_and_unset_fields_stay_vllms() -> None:
    assert vllm_engine_args(llm_model().llm, gpus_per_pod=4, nodes=1) == {"tensor_parallel_size": 4}  # type: ignore[arg-type]


def test_every_typed_field_and_the_escape_hatch() -> None:
    model = llm_model(
        tensorParallelSize=8,
        pipelineParallelSize=2,
        maxModelLen=8192,
        gpuMemoryUtilization=0.85,
        dtype="bfloat16",
        quantization="fp8",
        enablePrefixCaching=True,
        maxNumSeqs=64,
        loraAdapters=[{"name": "sql", "source": "s3://adapters/sql"}],
        engineArgs={"enforce_eager": True, "max_lora_rank": 64, "hf_overrides": {"rope_theta": 1e6}},
    )
    assert vllm_model_json(model, gpus_per_pod=8, nodes=2, weights="/models/qwen/weights") == {
        "model": "/models/qwen/weights",
        "tensor_parallel_size": 8,
        "pipeline_parallel_size": 2,
        "max_model_len": 8192,
        "gpu_memory_utilization": 0.85,
        "dtype": "bfloat16",
        "quantization": "fp8",
        "enable_prefix_caching": True,
        "max_num_seqs": 64,
        "distributed_executor_backend": "ray",  # the group's nodes join the leader's engine
        "enable_lora": True,
        "enforce_eager": True,
        "max_lora_rank": 64,
        "hf_overrides": {"rope_theta": 1e6},
    }


def test_config_pbtxt_is_the_decoupled_vllm_backend_with_its_metrics() -> None:
    text = render_model_config(llm_model())
    assert text is not None
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert (config.name, config.backend, config.max_batch_size) == ("qwen", "vllm", 0)
    assert config.model_transaction_policy.decoupled
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_MODEL]
    assert config.parameters["REPORT_CUSTOM_METRICS"].string_value == "true"
    assert not config.HasField("dynamic_batching")  # vLLM batches continuously itself


def test_examples_resolve_their_parallelism() -> None:
    single, multi = example("llm-vllm.yaml"), example("llm-multinode.yaml")
    assert parallelism(single) == (4, 1)
    assert parallelism(multi) == (8, 2)


def hf_model_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    (root / "model.safetensors").write_bytes(b"\0" * 64)
    return root


def test_the_init_container_lays_out_the_vllm_repository(tmp_path: Path) -> None:
    pvc = tmp_path / "pvc"
    hf_model_dir(pvc / "models" / "qwen")
    (pvc / "models" / "sql").mkdir(parents=True)
    (pvc / "models" / "sql" / "adapter_config.json").write_text("{}")
    model = llm_model(tensorParallelSize=2, loraAdapters=[{"name": "sql", "source": "pvc://models/sql"}])
    out = tmp_path / "models"
    plan = parse_plan(repository_plan([model], gpus_per_pod=2))
    assert assemble_repository(plan, out, pvc, {}) == []

    served = out / "qwen"
    assert sorted(p.name for p in served.iterdir()) == ["1", "config.pbtxt", "lora", "weights"]
    model_json = json.loads((served / "1" / "model.json").read_text())
    assert model_json == {"model": str(served / "weights"), "tensor_parallel_size": 2, "enable_lora": True}
    assert (served / "weights" / "config.json").is_file()
    assert json.loads((served / "1" / "multi_lora.json").read_text()) == {"sql": str(served / "lora" / "sql")}
    assert (served / "lora" / "sql" / "adapter_config.json").is_file()


def test_a_source_that_is_not_a_hugging_face_model_is_refused_naming_it(tmp_path: Path) -> None:
    pvc = tmp_path / "pvc"
    (pvc / "models" / "qwen" / "1").mkdir(parents=True)  # a Triton layout, not model files
    plan = parse_plan(repository_plan([llm_model()], gpus_per_pod=1))
    errors = assemble_repository(plan, tmp_path / "models", pvc, {})
    assert [str(e) for e in errors] == [
        "model 'qwen' from pvc://models/qwen: no config.json in the source: not a Hugging Face model "
        "folder (found ['1'])"
    ]
    assert not (tmp_path / "models" / "qwen").exists()  # nothing half-made for Triton to load


@pytest.mark.parametrize("name", ["llm-vllm.yaml", "llm-multinode.yaml"])
def test_the_examples_plan_carries_the_engine_arguments(name: str) -> None:
    deployment = build_triton_deployment(example(name), Settings())
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]
    plan = parse_plan(next(e["value"] for e in init["env"] if e["name"] == "KUBEFORGE_MODELS"))
    assert plan[0].engine_args is not None
    assert plan[0].engine_args["tensor_parallel_size"] == (4 if name == "llm-vllm.yaml" else 8)


def test_a_hugging_face_token_comes_from_the_secret_never_as_a_value() -> None:
    doc = yaml.safe_load((EXAMPLES / "llm-vllm.yaml").read_text())
    doc["metadata"]["uid"] = "u-1"
    doc["spec"]["storage"] = {"secretName": "hf"}
    md = ModelDeployment.model_validate(doc)
    # the example has a model cache: its fill Job downloads, the serving pods get no credentials at all
    fill = build_cache_fill_job(md, Settings())
    assert fill is not None
    token = {"prefix": "KUBEFORGE_STORAGE_", "secretRef": {"name": "hf"}}
    assert fill["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [token]
    assert all(
        "HF_TOKEN" not in e.get("value", "") for e in fill["spec"]["template"]["spec"]["containers"][0]["env"]
    )
    init = build_triton_deployment(md, Settings())["spec"]["template"]["spec"]["initContainers"][0]
    assert [e["name"] for e in init["env"]] == ["KUBEFORGE_MODELS"]
    assert "envFrom" not in init
    doc["spec"].pop("cache")
    md = ModelDeployment.model_validate(doc)
    init = build_triton_deployment(md, Settings())["spec"]["template"]["spec"]["initContainers"][0]
    assert init["envFrom"] == [token]


def test_a_vllm_model_runs_on_tritons_vllm_image_unless_the_spec_names_one() -> None:
    settings = Settings(triton_image="triton:plain", triton_vllm_image="triton:vllm")
    md = example("llm-vllm.yaml")
    assert (
        build_triton_deployment(md, settings)["spec"]["template"]["spec"]["containers"][0]["image"]
        == "triton:vllm"
    )
    doc = yaml.safe_load((EXAMPLES / "llm-vllm.yaml").read_text())
    doc["metadata"]["uid"] = "u-1"
    doc["spec"]["runtime"] = {"image": "registry.local/triton:mine"}
    mine = build_triton_deployment(ModelDeployment.model_validate(doc), settings)
    assert mine["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/triton:mine"


def test_lora_adapters_on_a_claim_of_their_own_are_mounted_for_the_init_container() -> None:
    doc = yaml.safe_load((EXAMPLES / "llm-vllm.yaml").read_text())
    doc["metadata"]["uid"] = "u-1"
    doc["spec"].pop("cache")
    doc["spec"]["models"][0]["source"] = "pvc://models/qwen"
    doc["spec"]["models"][0]["llm"]["loraAdapters"] = [{"name": "sql", "source": "pvc://adapters/sql"}]
    pod = build_triton_deployment(ModelDeployment.model_validate(doc), Settings())["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert [m["mountPath"] for m in init["volumeMounts"] if m.get("readOnly")] == [
        "/mnt/pvc/models",
        "/mnt/pvc/adapters",
    ]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["models", "adapters"]
