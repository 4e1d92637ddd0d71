"""The byte-level language model under torchrun (2 ranks, gloo on CPU): it learns the shipped corpus,
reports validation loss and perplexity, resumes bit-identically after SIGTERM, and exports a
streaming (decoupled) Triton model."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pytest
import torch
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from kubeforge.trainer import generation, triton_llm_model
from kubeforge.trainer.checkpoint import load_checkpoint
from kubeforge.trainer.language_model import ByteTransformer
from kubeforge.trainer.llm_export import GENERATE_INPUTS
from tests.trainer.runs import (
    LM_TOTAL_STEPS,
    LM_TRAINING_ARGS,
    LM_VALIDATION_LOSS_BELOW,
    ReferenceRun,
    finish,
    read_progress,
    run,
    start,
    terminate,
    torchrun_argv,
    wait_for_step,
)

pytestmark = pytest.mark.torch

INTERRUPT_AFTER = 25  # before the first checkpoint (50) and the first validation (50)


def test_loss_falls_below_the_stated_threshold(language_model_run: ReferenceRun) -> None:
    run_ = language_model_run.run
    losses, validation = run_.losses(), run_.validation_losses()
    assert sorted(losses) == list(range(1, LM_TOTAL_STEPS + 1)), run_.output
    assert sorted(validation) == [50, 100]
    # ln 256 = 5.55 at the start; below the corpus's unigram entropy (3.17) means the model reads context
    assert statistics.mean(losses[s] for s in range(1, 6)) > 4.0
    assert validation[100] < validation[50]
    assert validation[100] < LM_VALIDATION_LOSS_BELOW, validation


def test_ranks_agree_and_progress_reports_validation(language_model_run: ReferenceRun) -> None:
    digests = language_model_run.run.digests()
    assert set(digests) == {0, 1} and digests[0] == digests[1]
    progress = read_progress(language_model_run.checkpoint_dir)
    assert progress is not None and progress["state"] == "succeeded"
    validation = progress["validation"]
    assert validation["step"] == LM_TOTAL_STEPS
    assert validation["loss"] == pytest.approx(
        language_model_run.run.validation_losses()[LM_TOTAL_STEPS], abs=1e-4
    )
    assert validation["perplexity"] == pytest.approx(math.exp(validation["loss"]))
    # what the operator reads into status.validation once the workers exit
    assert json.loads(language_model_run.termination_log.read_text())["validation"] == validation
    # the checkpoint carries it too, so a resumed run reports it before its next validation
    state = load_checkpoint(language_model_run.checkpoint_dir / f"ckpt-{LM_TOTAL_STEPS:08d}.pt")
    assert state.get("validation") == validation


def test_preempted_run_resumes_bit_identically(tmp_path: Path, language_model_run: ReferenceRun) -> None:
    checkpoint_dir = tmp_path / "checkpoints"
    args = [*LM_TRAINING_ARGS, "--checkpoint-dir", str(checkpoint_dir)]
    first = start(torchrun_argv(2, [*args, "--sleep-per-step", "0.1"]), tmp_path / "first.log")
    wait_for_step(first, checkpoint_dir, INTERRUPT_AFTER)
    terminate(first)
    interrupted = finish(first, tmp_path / "first.log")
    assert interrupted.returncode != 0, interrupted.output
    stops = re.findall(r"\[rank (\d)\] WARNING .*SIGTERM: stopped after step (\d+)", interrupted.output)
    assert sorted(rank for rank, _ in stops) == ["0", "1"], interrupted.output
    stopped_at = int(stops[0][1])
    assert INTERRUPT_AFTER <= stopped_at < LM_TOTAL_STEPS

    resumed = run(torchrun_argv(2, args), tmp_path / "second.log")
    assert resumed.returncode == 0, resumed.output
    assert min(resumed.losses()) == stopped_at + 1  # no step was trained twice
    digests = resumed.digests()
    assert digests[0] == digests[1] == language_model_run.run.digests()[0]
    # the same parameters validate to the same loss, bit for bit
    progress, reference = read_progress(checkpoint_dir), read_progress(language_model_run.checkpoint_dir)
    assert progress is not None and reference is not None
    assert progress["validation"] == reference["validation"]


def test_export_is_a_decoupled_streaming_model(language_model_run: ReferenceRun) -> None:
    model_dir = language_model_run.model_dir
    version_dir = model_dir / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == ["generation.py", "model.pt", "model.py"]
    assert (version_dir / "model.py").read_bytes() == Path(triton_llm_model.__file__).read_bytes()
    assert (version_dir / "generation.py").read_bytes() == Path(generation.__file__).read_bytes()

    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (config.name, config.backend, config.max_batch_size) == ("opticks", "python", 0)
    assert config.model_transaction_policy.decoupled
    assert [(i.name, i.optional) for i in config.input] == [
        (s.name, bool(s.optional)) for s in GENERATE_INPUTS
    ]
    # the vLLM backend's inputs, and TensorRT-LLM's sampling inputs
    assert {i.name for i in config.input} == {
        "text_input", "sampling_parameters", "stop", *triton_llm_model.SCALAR_INPUTS,
        "exclude_input_in_output", "return_finish_reason", "return_num_input_tokens", "return_num_output_tokens",
    }  # fmt: skip
    assert [o.name for o in config.output] == [
        "text_output",
        "finish_reason",
        "num_input_tokens",
        "num_output_tokens",
    ]
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_AUTO, 1)
    ]
    parameters = json_format.MessageToDict(config)["parameters"]
    assert parameters["max_concurrent_streams"] == {"stringValue": "16"}
    assert parameters["max_prompt_tokens"] == {"stringValue": "4096"}


def test_torchscript_export_computes_what_was_trained(language_model_run: ReferenceRun) -> None:
    model = ByteTransformer()
    model.load_state_dict(
        load_checkpoint(language_model_run.checkpoint_dir / f"ckpt-{LM_TOTAL_STEPS:08d}.pt")["model"]
    )
    scripted = torch.jit.load(str(language_model_run.model_dir / "1" / "model.pt"))
    tokens = torch.tensor([list(b"Of the Refractions of Light")])
    with torch.no_grad():
        torch.testing.assert_close(scripted(tokens), model.eval()(tokens), rtol=0, atol=0)
