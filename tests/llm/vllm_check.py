"""Checks model.json files for Triton's vLLM backend with vLLM's own classes (no GPU needed).

Runs in the vllm tool environment (tests/llm/vllm-env.sh prints its python); the standard library
and vllm only. For each model.json:

1. What Triton's vLLM backend does with the file before the engine starts
   (triton-inference-server/vllm_backend src/model.py, `_init_engine_args`, unchanged from r24.12
   to r26.01 and on main at 8de0c14):
   - `_validate_device_config`: `int(tensor_parallel_size)` and `int(pipeline_parallel_size)`;
   - `_setup_lora`: with `str(enable_lora).lower() == "true"`, `multi_lora.json` must sit next to
     model.json (a JSON object of adapter name -> path), else FileNotFoundError;
   - then `AsyncEngineArgs(**model_json)`: every key, none removed (the backend pops no key), so
     an unknown key is vLLM's TypeError naming it.
2. vLLM's command line, which checks types and choices that the dataclass does not: each key as
   `--kebab-case=value` through `FlexibleArgumentParser` + `AsyncEngineArgs.add_cli_args`
   (argparse's error names the option: `argument --dtype: invalid choice: 'fp7'`), then every
   scalar must read back as the same value (a "4" where vLLM wants the int 4 fails here).
3. `quantization`: vLLM's `get_quantization_config`, the lookup the engine does
   ("Invalid quantization method: ...").

The engine config itself (`create_engine_config`) is not built: it needs the model's Hugging Face
config and a GPU platform.

usage: python vllm_check.py MODEL_JSON...      one report line per file
       python vllm_check.py --batch < cases.json   cases: {"label": {model.json fields}, ...}
Prints `OK <label>` or `FAIL <label>: <error>; <error>` per input; exits 1 if any failed, 2 on bad
usage.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

# The check reads arguments, it fetches nothing: a model id stays an id even where the caller runs
# with HF_HUB_OFFLINE=1 (EngineArgs.__post_init__ would resolve it from the local hub cache then).
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

# vLLM resolves its platform on import; without a GPU it finds none, and the defaults that
# add_cli_args computes (DeviceConfig's "auto") then fail. CUDA's platform class cannot even be
# imported without the driver (libcuda.so.1), so the parser is built on vLLM's CPU platform: it
# changes no argument's spelling, type or choices, only device defaults the check never reads.
import vllm.platforms
from vllm.platforms.cpu import CpuPlatform

vllm.platforms.current_platform = CpuPlatform()

import vllm  # noqa: E402
from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: E402
from vllm.model_executor.layers.quantization import get_quantization_config  # noqa: E402
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402

MULTI_LORA_FILENAME = "multi_lora.json"  # the backend's _MULTI_LORA_ARGS_FILENAME


def cli_parser() -> FlexibleArgumentParser:
    parser = FlexibleArgumentParser(prog="vllm-engine-args")
    AsyncEngineArgs.add_cli_args(parser)
    return parser


def backend_errors(fields: dict[str, Any], model_json: Path | None) -> list[str]:
    """What the vLLM backend's model.py checks before it constructs AsyncEngineArgs."""
    errors = []
    for key in ("tensor_parallel_size", "pipeline_parallel_size"):
        try:
            int(fields.get(key, 1))
        except (TypeError, ValueError) as error:
            errors.append(f"{key}: the backend's int() fails: {error}")
    if "enable_lora" in fields and str(fields["enable_lora"]).lower() == "true" and model_json is not None:
        lora_file = model_json.parent / MULTI_LORA_FILENAME
        try:
            adapters = json.loads(lora_file.read_text())
        except FileNotFoundError:
            errors.append(f"enable_lora: the backend cannot find {lora_file}")
        except ValueError as error:
            errors.append(f"enable_lora: {lora_file} is not JSON: {error}")
        else:
            if not isinstance(adapters, dict) or not all(
                isinstance(name, str) and isinstance(path, str) for name, path in adapters.items()
            ):
                errors.append(f"enable_lora: {lora_file} must map adapter names to paths")
    return errors


def constructor_errors(fields: dict[str, Any]) -> list[str]:
    """AsyncEngineArgs(**fields), exactly as the backend calls it."""
    try:
        AsyncEngineArgs(**fields)
    except Exception as error:  # noqa: BLE001 - any failure here fails the model's load in Triton
        return [f"AsyncEngineArgs(**model.json): {type(error).__name__}: {error}"]
    return []


def cli_argv(fields: dict[str, Any], parser: FlexibleArgumentParser) -> tuple[list[str], list[str]]:
    """model.json as vLLM command-line arguments (and the keys that have no option)."""
    actions = parser._option_string_actions  # argparse's own table: option string -> action
    argv: list[str] = []
    unknown: list[str] = []
    for key, value in fields.items():
        option = "--" + key.replace("_", "-")
        action = actions.get(option)
        if action is None:
            unknown.append(option)
            argv.append(f"{option}={value}")  # argparse then reports it as unrecognized
        elif value is None:
            continue  # no command-line spelling for None; the constructor saw it
        elif action.nargs == 0 and isinstance(value, bool):  # a flag
            if isinstance(action, argparse.BooleanOptionalAction):
                argv.append(option if value else "--no-" + key.replace("_", "-"))
            elif value == action.const:  # store_true given true (store_false given false)
                argv.append(option)
            # else: the flag's default, which the command line spells by leaving it out
        elif action.nargs == 0:
            # a flag given a non-boolean ("true" is truthy, and so is "false"): argparse says
            # "ignored explicit argument"
            argv.append(f"{option}={value}")
        elif isinstance(value, dict):
            argv.append(f"{option}={json.dumps(value)}")
        elif isinstance(value, list) and action.nargs in ("+", "*"):
            argv += [option, *(str(item) for item in value)]
        elif isinstance(value, list):
            argv.append(f"{option}={json.dumps(value)}")
        elif isinstance(value, bool):
            argv.append(f"{option}={str(value).lower()}")
        else:
            argv.append(f"{option}={value}")
    return argv, unknown


def cli_errors(fields: dict[str, Any], parser: FlexibleArgumentParser) -> list[str]:
    """The fields through vLLM's own parser: types, choices, and the value that comes back."""
    argv, _ = cli_argv(fields, parser)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            namespace = parser.parse_args(argv)
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        return [f"vLLM's CLI: {message[-1] if message else 'parse failed'}"]
    errors = []
    for key, value in fields.items():
        if isinstance(value, bool | int | float | str) and hasattr(namespace, key):
            parsed = getattr(namespace, key)
            if parsed != value or isinstance(parsed, bool) != isinstance(value, bool):
                errors.append(
                    f"{key}: model.json has {value!r} ({type(value).__name__}), "
                    f"vLLM's CLI reads {parsed!r} ({type(parsed).__name__})"
                )
    try:
        AsyncEngineArgs.from_cli_args(namespace)
    except Exception as error:  # noqa: BLE001 - vLLM's own verdict, whatever its type
        errors.append(f"AsyncEngineArgs.from_cli_args: {type(error).__name__}: {error}")
    return errors


def quantization_errors(fields: dict[str, Any]) -> list[str]:
    quantization = fields.get("quantization")
    if quantization is None:
        return []
    try:
        get_quantization_config(quantization)
    except (ValueError, TypeError) as error:
        return [f"quantization: {error}"]
    return []


def check(fields: Any, parser: FlexibleArgumentParser, model_json: Path | None = None) -> list[str]:
    """Every error vLLM (and the backend around it) finds in one model.json; empty when it is valid."""
    if not isinstance(fields, dict):
        return [f"model.json must be a JSON object, not {type(fields).__name__}"]
    return (
        backend_errors(fields, model_json)
        + constructor_errors(fields)
        + cli_errors(fields, parser)
        + quantization_errors(fields)
    )


def main(argv: list[str]) -> int:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("paths", nargs="*", type=Path, help="model.json files")
    arguments.add_argument("--batch", action="store_true", help='stdin: {"label": {model.json fields}, ...}')
    options = arguments.parse_args(argv)
    cases: list[tuple[str, Any, Path | None]] = []
    for path in options.paths:
        try:
            cases.append((str(path), json.loads(path.read_text()), path))
        except (OSError, ValueError) as error:
            cases.append((str(path), error, path))
    if options.batch:
        batch = json.load(sys.stdin)
        if not isinstance(batch, dict):
            arguments.error("--batch reads a JSON object of label -> model.json fields")
        cases += [(label, fields, None) for label, fields in batch.items()]
    if not cases:
        arguments.error("give model.json paths or --batch")
    parser = cli_parser()
    failed = 0
    for label, fields, path in cases:
        errors = [f"unreadable: {fields}"] if isinstance(fields, Exception) else check(fields, parser, path)
        failed += bool(errors)
        print(f"FAIL {label}: {'; '.join(errors)}" if errors else f"OK {label}", flush=True)
    print(f"vllm {vllm.__version__}: {len(cases) - failed} OK, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
