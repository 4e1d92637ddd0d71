"""The model repository Triton loads: the plan (pure) and the init container that lays it out.

The operator's builder puts `repository_plan(spec.models)` into the init container's environment
(`KUBEFORGE_MODELS`) and runs `kubeforge assemble-repository --out /models --pvc-root /mnt/pvc`.
That program fetches every model into `<out>/<name>/` and writes its rendered `config.pbtxt`, so
Triton starts with a plain local repository
(https://github.com/triton-inference-server/server/blob/main/docs/user_guide/model_repository.md):

    <out>/<name>/config.pbtxt
    <out>/<name>/<version>/<model files>

A vLLM model with `llm` (Triton's vLLM backend) is laid out from the plan's engine arguments; the
source holds the Hugging Face model files, which Triton never reads itself (a non-numeric folder
is not a version):

    <out>/<name>/config.pbtxt              backend "vllm", decoupled
    <out>/<name>/1/model.json              {"model": "<out>/<name>/weights", ...engine arguments}
    <out>/<name>/1/multi_lora.json         {"<adapter>": "<out>/<name>/lora/<adapter>"} (LoRA only)
    <out>/<name>/weights/                  the source
    <out>/<name>/lora/<adapter>/           each adapter's source
    <out>/<name>/chat_template.jinja       llm.chatTemplate (for the OpenAI front)

With a model cache (spec.cache; `--cache-dir <cache root>/<key>`, see kubeforge.triton.cache) the
init container downloads nothing: it refuses a cache without its completion marker, links each
model's version folders from the cache (its config.pbtxt is copied, to be rendered over), and a
vLLM model's model.json names the weights in the cache itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import Message

from kubeforge.api.modeldeployment import ModelSpec
from kubeforge.openai import CHAT_TEMPLATE_FILE
from kubeforge.redact import redact, redact_logs
from kubeforge.triton.cache import ADAPTERS_DIR, MODELS_DIR, CacheError, require_complete
from kubeforge.triton.config import (
    CONFIG_FILENAME,
    HEADER,
    VLLM_MODEL_JSON,
    VLLM_MULTI_LORA_JSON,
    VLLM_VERSION,
    render_model_config,
    vllm_engine_args,
)
from kubeforge.triton.sources import DEFAULT_PVC_ROOT, SourceError, fetch_source

log = logging.getLogger(__name__)

PLAN_ENV = "KUBEFORGE_MODELS"
DEFAULT_OUT = "/models"
# Where a model is staged before it is moved into place, so a restarted init container never
# leaves Triton a half-copied model; removed when assembly ends.
STAGING_DIRNAME = ".kubeforge-staging"
# A vLLM model's folders for its weights and LoRA adapters, next to its version folder
WEIGHTS_DIRNAME = "weights"
LORA_DIRNAME = "lora"


class PlanError(ValueError):
    """The plan handed to the init container is not valid."""


class AssemblyError(RuntimeError):
    """A model could not be put into the repository; the message names the model and its source."""

    def __init__(self, model: str, source: str, reason: str) -> None:
        super().__init__(f"model {model!r} from {redact(source)}: {redact(reason)}")
        self.model = model
        self.source = source
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# The plan: pure, imported by the builders.


@dataclass(frozen=True)
class PlannedModel:
    """One model the init container puts into the repository."""

    name: str
    source: str
    format: str
    config_pbtxt: str | None
    # a vLLM model with `llm`: its engine arguments (model.json without "model") and LoRA adapters
    engine_args: dict[str, object] | None = None
    lora: dict[str, str] | None = None
    chat_template: str | None = None  # written as <name>/chat_template.jinja for the OpenAI front


def repository_plan(models: Sequence[ModelSpec], gpus_per_pod: int = 1, nodes: int = 1) -> str:
    """The init container's plan (the value of `KUBEFORGE_MODELS`): JSON, deterministic, no I/O.

    `gpus_per_pod` and `nodes` resolve a vLLM model's parallelism defaults.
    """
    entries: list[dict[str, object]] = []
    for m in models:
        entry: dict[str, object] = {
            "name": m.name,
            "source": m.source,
            "format": m.format.value,
            "configPbtxt": render_model_config(m),
        }
        if m.llm is not None:
            entry["engineArgs"] = vllm_engine_args(m.llm, gpus_per_pod, nodes)
            if m.llm.lora_adapters:
                entry["lora"] = {a.name: a.source for a in m.llm.lora_adapters}
            if m.llm.chat_template is not None:
                entry["chatTemplate"] = m.llm.chat_template
        entries.append(entry)
    return json.dumps(entries, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def parse_plan(text: str) -> list[PlannedModel]:
    """Read a plan written by `repository_plan`; PlanError says what is wrong."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"{PLAN_ENV} is not JSON: {exc}") from exc
    if not isinstance(entries, list) or not entries:
        raise PlanError(f"{PLAN_ENV} must be a non-empty JSON list of models")
    plan = [_planned_model(index, entry) for index, entry in enumerate(entries)]
    names = [m.name for m in plan]
    if len(set(names)) != len(names):
        raise PlanError(f"{PLAN_ENV}: model names must be unique, got {names}")
    return plan


def _planned_model(index: int, entry: object) -> PlannedModel:
    if not isinstance(entry, dict):
        raise PlanError(f"{PLAN_ENV}[{index}] must be an object")
    fields = {key: entry.get(key) for key in ("name", "source", "format")}
    for key, value in fields.items():
        if not isinstance(value, str) or not value:
            raise PlanError(f"{PLAN_ENV}[{index}].{key} must be a non-empty string")
    name = str(fields["name"])
    # the name becomes a directory: nothing that could climb out of the repository
    if not _safe_name(name):
        raise PlanError(f"{PLAN_ENV}[{index}].name {name!r} is not a valid model name")
    config = entry.get("configPbtxt")
    if config is not None and not isinstance(config, str):
        raise PlanError(f"{PLAN_ENV}[{index}].configPbtxt must be a string or null")
    engine_args = entry.get("engineArgs")
    if engine_args is not None and not isinstance(engine_args, dict):
        raise PlanError(f"{PLAN_ENV}[{index}].engineArgs must be an object or null")
    lora = entry.get("lora")
    if lora is not None and not (
        isinstance(lora, dict)
        and all(isinstance(k, str) and _safe_name(k) and isinstance(v, str) for k, v in lora.items())
    ):
        raise PlanError(f"{PLAN_ENV}[{index}].lora must map adapter names to sources")
    chat_template = entry.get("chatTemplate")
    if chat_template is not None and not isinstance(chat_template, str):
        raise PlanError(f"{PLAN_ENV}[{index}].chatTemplate must be a string or null")
    return PlannedModel(
        name=name,
        source=str(fields["source"]),
        format=str(fields["format"]),
        config_pbtxt=config,
        engine_args=engine_args,
        lora=lora,
        chat_template=chat_template,
    )


def _safe_name(name: str) -> bool:
    """A name that can be a directory without climbing out of its parent."""
    return bool(name) and "/" not in name and name not in (".", "..") and not name.startswith(".")


def pvc_claim(source: str) -> str | None:
    """The claim name of a `pvc://<claim>/<path>` source; None for other schemes."""
    if not source.startswith("pvc://"):
        return None
    return source.removeprefix("pvc://").split("/", 1)[0]


def source_uris(models: Sequence[ModelSpec]) -> list[str]:
    """Every source the models are fetched from: each model's, then its LoRA adapters'."""
    uris: list[str] = []
    for m in models:
        uris.append(m.source)
        uris += [a.source for a in m.adapters()]
    return uris


def pvc_claims(models: Sequence[ModelSpec]) -> list[str]:
    """The PersistentVolumeClaims the sources live on (mounted read-only), sorted, each once."""
    return sorted({claim for uri in source_uris(models) if (claim := pvc_claim(uri)) is not None})


def pvc_mount_path(claim: str, pvc_root: str = DEFAULT_PVC_ROOT) -> str:
    """Where the init container mounts a claim: `<pvc-root>/<claim>`."""
    return f"{pvc_root.rstrip('/')}/{claim}"


def assemble_args(out: str = DEFAULT_OUT, pvc_root: str = DEFAULT_PVC_ROOT) -> list[str]:
    """The init container's args after the `kubeforge` executable."""
    return ["assemble-repository", "--out", out, "--pvc-root", pvc_root]


# ---------------------------------------------------------------------------------------------
# config.pbtxt and checks.


def _parse_config(text: str) -> Message:
    """Parse config.pbtxt text into Triton's ModelConfig message (raises text_format.ParseError)."""
    # protobuf and the schema come with tritonclient[grpc]; imported here, not at the top, so that
    # the builders that import the plan functions do not pay for grpc
    from tritonclient.grpc import model_config_pb2

    message: Message = text_format.Parse(text, model_config_pb2.ModelConfig())
    return message


def merge_config(source_text: str, rendered_text: str) -> str:
    """The source's config.pbtxt with every field the spec sets replaced by the spec's.

    The spec always owns name, platform/backend and max_batch_size; other fields (input,
    dynamic_batching, ...) are replaced whole when the spec sets them and kept from the source
    otherwise, so what the spec cannot say (ensemble_scheduling, version_policy, optimization,
    model_warmup) survives.
    """
    source = _parse_config(source_text)
    rendered = _parse_config(rendered_text)
    for field in ("name", "platform", "backend", "max_batch_size"):
        source.ClearField(field)
    for descriptor, _ in rendered.ListFields():
        source.ClearField(descriptor.name)
    source.MergeFrom(rendered)
    merged = str(text_format.MessageToString(source))
    return HEADER + "# Merged over the config.pbtxt of the model's source.\n" + merged


def write_config(model: PlannedModel, model_dir: Path) -> None:
    """Write the spec's config.pbtxt (merged over the source's, if any); check the config's name."""
    path = model_dir / CONFIG_FILENAME
    source_text = path.read_text() if path.is_file() else None
    if model.config_pbtxt is not None:
        try:
            text = (
                model.config_pbtxt if source_text is None else merge_config(source_text, model.config_pbtxt)
            )
        except text_format.ParseError as exc:
            raise AssemblyError(model.name, model.source, f"cannot merge {CONFIG_FILENAME}: {exc}") from exc
        path.write_text(text)
        source_text = text
        log.info("model %s: wrote %s from the spec", model.name, CONFIG_FILENAME)
    if source_text is not None:
        check_config_name(model, source_text)


def check_config_name(model: PlannedModel, text: str) -> None:
    """Triton refuses a model whose config.pbtxt `name` differs from its directory name."""
    try:
        name = getattr(_parse_config(text), "name", "")
    except text_format.ParseError as exc:
        # a field newer than our protobuf schema is not ours to refuse: Triton has the last word
        log.warning("model %s: cannot read %s (%s); leaving it to Triton", model.name, CONFIG_FILENAME, exc)
        return
    if name and name != model.name:
        reason = f"{CONFIG_FILENAME} names the model {name!r}; rename it to {model.name!r} or set the spec's config"
        raise AssemblyError(model.name, model.source, reason)


def version_dirs(model_dir: Path) -> list[str]:
    """The numeric version directories of a model directory, in version order."""
    return sorted((p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=int)


def check_model_dir(model: PlannedModel, model_dir: Path) -> list[str]:
    """Refuse a model directory Triton would not load; return its versions."""
    versions = version_dirs(model_dir)
    if not versions:
        found = sorted(p.name for p in model_dir.iterdir())
        reason = f"no numeric version directory (e.g. 1/) in the model directory; found {found or 'nothing'}"
        raise AssemblyError(model.name, model.source, reason)
    return versions


# ---------------------------------------------------------------------------------------------
# The program.


def _fetch(model: PlannedModel, source: str, dest: Path, pvc_root: Path, environ: Mapping[str, str]) -> None:
    log.info("model %s: fetching %s", model.name, source)
    try:
        fetch_source(source, dest, pvc_root, environ)
    except SourceError as exc:
        raise AssemblyError(model.name, source, str(exc)) from exc


def stage_vllm_model(
    model: PlannedModel,
    staged: Path,
    final: Path,
    pvc_root: Path,
    environ: Mapping[str, str],
    cache_dir: Path | None = None,
) -> None:
    """Lay out a vLLM model in `staged`; the paths written into model.json are those under `final`.

    With a model cache, nothing is fetched: model.json and multi_lora.json name the weights and
    adapters in the cache (`<cache>/models/<name>`, `<cache>/adapters/<name>/<adapter>`), read-only.
    """
    assert model.engine_args is not None
    if cache_dir is None:
        _fetch(model, model.source, staged / WEIGHTS_DIRNAME, pvc_root, environ)
        weights = final / WEIGHTS_DIRNAME
        adapters = {adapter: final / LORA_DIRNAME / adapter for adapter in sorted(model.lora or {})}
        for adapter, source in sorted((model.lora or {}).items()):
            _fetch(model, source, staged / LORA_DIRNAME / adapter, pvc_root, environ)
        found_weights = staged / WEIGHTS_DIRNAME
    else:
        staged.mkdir(parents=True)
        weights = found_weights = cache_dir / MODELS_DIR / model.name
        adapters = {a: cache_dir / ADAPTERS_DIR / model.name / a for a in sorted(model.lora or {})}
        missing = [str(p) for p in (weights, *adapters.values()) if not p.is_dir()]
        if missing:
            raise AssemblyError(model.name, model.source, f"not in the model cache: {', '.join(missing)}")
    if not (found_weights / "config.json").is_file():
        found = sorted(p.name for p in found_weights.iterdir())[:10]
        reason = f"no config.json in the source: not a Hugging Face model folder (found {found or 'nothing'})"
        raise AssemblyError(model.name, model.source, reason)
    version = staged / VLLM_VERSION
    version.mkdir()
    model_json = {"model": str(weights), **model.engine_args}
    (version / VLLM_MODEL_JSON).write_text(json.dumps(model_json, indent=2, sort_keys=True) + "\n")
    if model.lora:
        paths = {adapter: str(path) for adapter, path in adapters.items()}
        (version / VLLM_MULTI_LORA_JSON).write_text(json.dumps(paths, indent=2) + "\n")
    if model.chat_template is not None:
        (staged / CHAT_TEMPLATE_FILE).write_text(model.chat_template)


def link_cached_model(model: PlannedModel, cached: Path, staged: Path) -> None:
    """Lay out a model from the cache without copying it: config.pbtxt is copied (the spec's is
    merged over it), every other entry (the version folders, label files) is a symlink into the
    read-only cache."""
    if not cached.is_dir():
        raise AssemblyError(model.name, model.source, f"not in the model cache ({cached} is missing)")
    staged.mkdir(parents=True)
    for entry in sorted(cached.iterdir()):
        if entry.name == CONFIG_FILENAME:
            shutil.copyfile(entry, staged / entry.name)
        else:
            (staged / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())


def assemble_model(
    model: PlannedModel,
    out: Path,
    pvc_root: Path,
    environ: Mapping[str, str],
    cache_dir: Path | None = None,
) -> None:
    """Fetch (or link from the cache), configure and check one model in a staging folder, then move
    it to `<out>/<name>`."""
    started = time.monotonic()
    staged = out / STAGING_DIRNAME / model.name
    final = out / model.name
    shutil.rmtree(staged, ignore_errors=True)
    if model.engine_args is not None:
        stage_vllm_model(model, staged, final, pvc_root, environ, cache_dir)
    elif cache_dir is not None:
        link_cached_model(model, cache_dir / MODELS_DIR / model.name, staged)
    else:
        _fetch(model, model.source, staged, pvc_root, environ)
    write_config(model, staged)
    versions = check_model_dir(model, staged)
    shutil.rmtree(final, ignore_errors=True)  # a restarted init container redoes the model
    staged.rename(final)
    log.info(
        "model %s: versions %s in %s (%.1fs)",
        model.name,
        ", ".join(versions),
        final,
        time.monotonic() - started,
    )


def assemble_repository(
    plan: Sequence[PlannedModel],
    out: Path,
    pvc_root: Path,
    environ: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
) -> list[AssemblyError]:
    """Assemble every model of the plan into out; returns the failures (all models are tried).

    With `cache_dir` (a filled model cache's key folder) nothing is downloaded: the models are
    linked from the cache, which must carry its completion marker (CacheError otherwise).
    """
    env = os.environ if environ is None else environ
    if cache_dir is not None:
        marker = require_complete(cache_dir)
        log.info(
            "serving from the model cache %s (%s bytes, %s)",
            cache_dir,
            marker.get("bytes"),
            marker.get("digest"),
        )
    (out / STAGING_DIRNAME).mkdir(parents=True, exist_ok=True)
    errors: list[AssemblyError] = []
    try:
        for model in plan:
            try:
                assemble_model(model, out, pvc_root, env, cache_dir)
            except AssemblyError as exc:
                log.error("%s", exc)
                errors.append(exc)
            except OSError as exc:
                error = AssemblyError(model.name, model.source, f"{type(exc).__name__}: {exc}")
                log.error("%s", error)
                errors.append(error)
    finally:
        shutil.rmtree(out / STAGING_DIRNAME, ignore_errors=True)
    return errors


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeforge assemble-repository",
        description=f"Lay out a Triton model repository from the plan in ${PLAN_ENV} (an init container).",
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="the model repository to fill (default %(default)s)"
    )
    parser.add_argument(
        "--pvc-root",
        default=DEFAULT_PVC_ROOT,
        help="where claims are mounted, one folder each (default %(default)s)",
    )
    parser.add_argument("--plan-file", help=f"read the plan from this file instead of ${PLAN_ENV}")
    parser.add_argument(
        "--cache-dir",
        help="a filled model cache's folder (<cache root>/<key>): link the models from it, download nothing",
    )
    return parser


def main(argv: list[str]) -> int:
    """`kubeforge assemble-repository`: 0 when every model is in place, 1 when one failed, 2 on bad input."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact_logs()
    text = Path(args.plan_file).read_text() if args.plan_file else os.environ.get(PLAN_ENV)
    if text is None:
        log.error("no plan: set %s (or pass --plan-file)", PLAN_ENV)
        return 2
    try:
        plan = parse_plan(text)
    except PlanError as exc:
        log.error("%s", exc)
        return 2
    out = Path(args.out)
    log.info("assembling %d model(s) into %s", len(plan), out)
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    try:
        errors = assemble_repository(plan, out, Path(args.pvc_root), cache_dir=cache_dir)
    except CacheError as exc:
        log.error("%s", exc)
        return 1
    if errors:
        log.error("%d of %d model(s) failed: %s", len(errors), len(plan), ", ".join(e.model for e in errors))
        return 1
    log.info("model repository ready: %s", ", ".join(m.name for m in plan))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
