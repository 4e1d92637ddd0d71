"""TrainingJob: distributed PyTorch on GPU pods with gang restart, checkpoints, Kueue, and train -> serve."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from kubeforge.api.base import ApiModel, Quantity, Rule, no_credential_rule, object_name_rules
from kubeforge.api.common import (
    GPU,
    ConditionList,
    EnvVar,
    ObjectMeta,
    Placement,
    PodMetadata,
    Resources,
)
from kubeforge.api.modeldeployment import (
    MODEL_NAME_PATTERN,
    MODEL_URI_PATTERN,
    PROPOSED_MODEL_RULE,
    ModelDeploymentSpec,
    ModelSpec,
)

KIND = "TrainingJob"
PLURAL = "trainingjobs"
# Worker pods are <name>-<attempt>-<index> and their hostnames must be DNS labels (<= 63 characters);
# the Job's name also becomes the batch.kubernetes.io/job-name label value (<= 63).
MAX_NAME_LENGTH = 45
DEFAULT_RETRYABLE_EXIT_CODES = tuple(range(128, 256))
ExitCode = Annotated[int, Field(ge=0, le=255)]


class FailurePolicy(ApiModel):
    """How a failed attempt is classified and retried. A retry restarts the whole gang from the last checkpoint."""

    max_restarts: int = Field(
        default=3, ge=0, le=100, description="Gang restarts allowed for retryable failures."
    )
    backoff_seconds: int = Field(
        default=10,
        ge=0,
        le=3600,
        description="Wait before a new attempt; doubles per restart, capped at 10 minutes.",
    )
    retryable_exit_codes: list[ExitCode] | None = Field(
        default=None,
        description="Exit codes that restart the gang. Default: 128-255 (signals such as 137 SIGKILL, 143 SIGTERM).",
    )
    count_preemptions: bool = Field(
        default=False,
        description="Whether evictions, preemptions and node loss consume maxRestarts (by default they do not).",
    )

    def is_retryable(self, exit_code: int) -> bool:
        codes = self.retryable_exit_codes
        return exit_code in (codes if codes is not None else DEFAULT_RETRYABLE_EXIT_CODES)


class Checkpoint(ApiModel):
    """A volume that survives restarts, where workers write and resume checkpoints."""

    claim_name: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253, description="PersistentVolumeClaim name."
    )
    mount_path: str = Field(
        default="/checkpoints", pattern=r"^/[^\s]*$", description="Where the claim is mounted in each worker."
    )
    sub_path: str | None = Field(
        default=None, description="Directory within the claim; defaults to the job name."
    )


class RunPolicy(ApiModel):
    """Deadlines, clean-up and suspension."""

    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job when it has been running longer than this."
    )
    pending_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Fail the job when its workers cannot all be scheduled within this time.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the workers and Service this long after the job finished."
    )
    suspend: bool = Field(default=False, description="Remove the workers and keep the job; false resumes it.")


class Scheduling(ApiModel):
    """Queueing and placement."""

    queue: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=63,
        description="Kueue LocalQueue: the workers are admitted as one gang by Kueue (kueue.x-k8s.io/queue-name).",
    )
    placement: Placement | None = Field(
        default=None, description="Node selection, tolerations, affinity, priority."
    )


class ModelDeploymentTemplateSpec(ModelDeploymentSpec):
    """A ModelDeployment spec whose model source the training output fills in."""

    rules = tuple(rule for rule in ModelDeploymentSpec.rules if rule is not PROPOSED_MODEL_RULE)

    models: list[ModelSpec] = Field(
        default_factory=list,
        max_length=64,
        description="Extra models; the trained model is added (or its source replaced) by the operator.",
    )


class ModelDeploymentTemplate(ApiModel):
    """The ModelDeployment to create or update when training succeeds."""

    name: str = Field(
        pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=63, description="Name of the ModelDeployment."
    )
    labels: dict[str, str] | None = Field(default=None, description="Labels of the ModelDeployment.")
    spec: ModelDeploymentTemplateSpec = Field(description="Its spec; models[].source is set from output.uri.")


class Output(ApiModel):
    """The trained model: where the trainer exports it, and what serves it."""

    uri: str = Field(
        pattern=MODEL_URI_PATTERN,
        max_length=1024,
        description="Triton model repository the trainer writes, e.g. pvc://models/mnist; "
        "the trained model is <uri>/<modelName>.",
    )
    model_name: str = Field(pattern=MODEL_NAME_PATTERN, description="Model name in the exported repository.")
    format: Literal["pytorch", "python", "python-llm"] = Field(
        default="python",
        description="pytorch (TorchScript for the libtorch backend), python (a Python-backend wrapper), or "
        "python-llm (a language model served by a decoupled Python-backend model that streams tokens "
        "through Triton's generate_stream and gRPC streaming; the ModelDeployment gets config.decoupled).",
    )
    model_deployment: ModelDeploymentTemplate | None = Field(
        default=None, description="Create or update this ModelDeployment when training succeeds."
    )
    propose_to: str | None = Field(
        default=None,
        pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description="Propose the trained model to this existing ModelDeployment (same namespace) when "
        "training succeeds. It must accept this job (its spec.rollout.proposals.jobLabels), and the "
        "job's status.validation must pass its gate; then the model rolls out there like any edit.",
    )

    rules = (
        Rule(
            cel="!has(self.modelDeployment) || !has(self.proposeTo)",
            message="output.modelDeployment (create one) and output.proposeTo (propose to an existing one) "
            "exclude each other",
            check=lambda o: o.model_deployment is None or o.propose_to is None,
        ),
        no_credential_rule(
            "uri", "give the trainer its credentials from a Secret (env with valueFrom.secretKeyRef)"
        ),
    )


class TrainingJobSpec(ApiModel):
    """The desired state of a TrainingJob."""

    image: str = Field(min_length=1, description="Container image of the workers.")
    command: list[str] | None = Field(default=None, description="Entrypoint; the image's when unset.")
    args: list[str] | None = Field(default=None, description="Arguments.")
    env: list[EnvVar] | None = Field(default=None, description="Extra environment variables.")
    workers: int = Field(default=1, ge=1, le=1024, description="Worker pods (torchrun nodes).")
    processes_per_worker: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Processes per worker (torchrun --nproc-per-node); default: GPUs per worker, or 1.",
    )
    gpu: GPU | None = Field(default=None, description="GPUs per worker; unset means CPU only.")
    resources: Resources | None = Field(default=None, description="CPU and memory per worker.")
    shm_size: Quantity = Field(
        default="2Gi", description="Size of the in-memory /dev/shm volume (DataLoader workers, NCCL)."
    )
    master_port: int = Field(default=23456, ge=1024, le=65535, description="Rendezvous port on worker 0.")
    failure_policy: FailurePolicy | None = Field(default=None, description="Retry classification and limits.")
    checkpoint: Checkpoint | None = Field(default=None, description="Checkpoint volume to resume from.")
    run_policy: RunPolicy | None = Field(default=None, description="Deadlines, TTL and suspension.")
    scheduling: Scheduling | None = Field(default=None, description="Kueue queue and placement.")
    output: Output | None = Field(
        default=None, description="The trained model and the ModelDeployment that serves it."
    )
    pod_metadata: PodMetadata | None = Field(
        default=None, description="Extra labels and annotations on the workers."
    )
    termination_grace_period_seconds: int = Field(
        default=120, ge=0, le=3600, description="Time a worker gets after SIGTERM to write its checkpoint."
    )
    service_account_name: str | None = Field(default=None, description="ServiceAccount of the workers.")
    image_pull_secrets: list[str] | None = Field(
        default=None, description="Names of Secrets to pull images with."
    )

    rules = (
        Rule(
            cel="!has(self.output) || !self.output.uri.startsWith('https://')",
            message="output.uri must be pvc://, s3:// or gs:// (an https:// location cannot be written)",
            check=lambda s: s.output is None or not s.output.uri.startswith(("https://", "http://")),
        ),
    )

    @property
    def nproc_per_worker(self) -> int:
        if self.processes_per_worker:
            return self.processes_per_worker
        return self.gpu.resource_count if self.gpu and not self.gpu.mig else 1


class TrainingPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class Failure(ApiModel):
    """What ended an attempt."""

    worker: int | None = Field(default=None, description="Index of the worker that failed.")
    pod: str | None = Field(default=None, description="Pod name.")
    exit_code: int | None = Field(default=None, description="Container exit code.")
    reason: str = Field(description="e.g. Error, OOMKilled, Evicted, Preempted, DeadlineExceeded.")
    message: str | None = Field(default=None, description="Detail.")
    retryable: bool = Field(description="Whether the failure policy retries it.")
    time: datetime | None = Field(default=None, description="When it was observed.")


class CheckpointInfo(ApiModel):
    """The newest checkpoint the trainer reported."""

    step: int | None = Field(default=None, description="Training step of the checkpoint.")
    path: str | None = Field(default=None, description="Checkpoint file.")
    loss: float | None = Field(default=None, description="Loss at that step.")
    time: datetime | None = Field(default=None, description="When it was written.")


class ValidationInfo(ApiModel):
    """The newest validation the trainer reported (models with held-out data, such as language models)."""

    step: int | None = Field(default=None, description="Training step of the validation.")
    loss: float | None = Field(
        default=None, description="Mean cross-entropy per predicted token on the held-out data (nats)."
    )
    perplexity: float | None = Field(default=None, description="exp(loss).")


class OutputModel(ApiModel):
    """The trained model handed to serving."""

    uri: str = Field(description="Where the model was exported.")
    model_deployment: str | None = Field(default=None, description="The ModelDeployment serving it.")


class ProposalPhase(StrEnum):
    REFUSED = "Refused"
    PROPOSED = "Proposed"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    SUPERSEDED = "Superseded"


class Proposal(ApiModel):
    """The trained model proposed to an existing ModelDeployment (spec.output.proposeTo)."""

    model_deployment: str = Field(description="The ModelDeployment proposed to.")
    phase: ProposalPhase = Field(
        description="Refused (by its opt-in or gate), Proposed (rolling out there), Promoted, RolledBack, or "
        "Superseded (a later proposal replaced it first)."
    )
    message: str = Field(description="The gate's verdict with its numbers, or the outcome.")
    uri: str = Field(description="The proposed model's source.")
    time: datetime | None = Field(default=None, description="When the phase was reached.")


class TrainingJobStatus(ApiModel):
    """The observed state of a TrainingJob; written only by the operator."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    observed_generation: int | None = Field(default=None, description="The generation the status describes.")
    phase: TrainingPhase | None = Field(
        default=None, description="Pending, Running, Restarting, Succeeded, Failed, Suspended."
    )
    conditions: ConditionList | None = Field(
        default=None,
        description="Created, Running, Restarting, Succeeded, Failed, Suspended; Ready, Reconciling, Stalled.",
    )
    attempt: int | None = Field(
        default=None, description="Current attempt, from 0; each gang restart adds one."
    )
    restarts: int | None = Field(
        default=None, description="Gang restarts for retryable failures (count against maxRestarts)."
    )
    preemptions: int | None = Field(
        default=None, description="Gang restarts caused by eviction, preemption or node loss."
    )
    workers: str | None = Field(
        default=None, description="Active/desired workers, e.g. 2/2 (a printer column)."
    )
    active_workers: int | None = Field(default=None, description="Workers running.")
    succeeded_workers: int | None = Field(default=None, description="Workers that exited 0 in this attempt.")
    failed_workers: int | None = Field(default=None, description="Workers that failed in this attempt.")
    start_time: datetime | None = Field(default=None, description="When the first attempt started running.")
    attempt_start_time: datetime | None = Field(
        default=None, description="When the current attempt was created."
    )
    restart_after: datetime | None = Field(
        default=None, description="When the next attempt may start (backoff)."
    )
    completion_time: datetime | None = Field(default=None, description="When the job succeeded or failed.")
    gpu_seconds: float | None = Field(
        default=None, description="GPU-seconds consumed across finished attempts."
    )
    last_failure: Failure | None = Field(
        default=None, description="The failure that ended the last failed attempt."
    )
    last_checkpoint: CheckpointInfo | None = Field(
        default=None, description="The newest checkpoint reported."
    )
    validation: ValidationInfo | None = Field(
        default=None, description="The newest validation loss and perplexity reported."
    )
    output_model: OutputModel | None = Field(
        default=None, description="The exported model and its ModelDeployment."
    )
    proposal: Proposal | None = Field(
        default=None, description="The proposal of the trained model (spec.output.proposeTo) and its outcome."
    )


class TrainingJob(ApiModel):
    """A TrainingJob object as stored by the API server."""

    model_config = ApiModel.model_config | {"extra": "ignore"}
    api_version: Literal["kubeforge.io/v1alpha1"] = Field(
        default="kubeforge.io/v1alpha1", description="API version."
    )
    kind: Literal["TrainingJob"] = Field(default="TrainingJob", description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: TrainingJobSpec = Field(description="Desired state.")
    status: TrainingJobStatus | None = Field(default=None, description="Observed state.")

    rules: ClassVar[tuple[Rule, ...]] = object_name_rules(
        MAX_NAME_LENGTH,
        "worker pods are named <name>-<attempt>-<index> and must fit a 63-character DNS label",
    )
