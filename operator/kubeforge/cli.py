"""The `kubeforge` command: run the operator, print CRDs, assemble a model repository, fill a model cache,
serve the OpenAI API in front of Triton."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from kubeforge import __version__
from kubeforge.redact import redact_logs


def _cmd_version(_: argparse.Namespace) -> int:
    print(f"kubeforge {__version__}")
    return 0


def _cmd_crds(args: argparse.Namespace) -> int:
    from kubeforge.api.crd import rendered_crds

    crds = rendered_crds()
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in crds.items():
            (out / name).write_text(text)
    else:
        sys.stdout.write("---\n".join(crds.values()))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from kubeforge.controllers.runner import run_operator

    return run_operator(
        namespaces=tuple(args.namespace or ()),
        liveness=args.liveness,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        workers=args.workers,
        verbose=args.verbose,
        leader_election=args.leader_elect,
        lease_namespace=args.leader_election_namespace,
        lease_name=args.leader_election_id,
        shutdown_seconds=args.shutdown_seconds,
    )


def _cmd_openai_front(args: argparse.Namespace) -> int:
    from kubeforge.openai.front import run_front

    return run_front(args.host, args.port, args.triton, Path(args.repository), args.model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubeforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the current kubeconfig (or in-cluster config)")
    run.add_argument(
        "--namespace", "-n", action="append", help="namespace to watch (repeatable); default: all namespaces"
    )
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint URL")
    run.add_argument("--metrics-port", type=int, default=8081, help="Prometheus metrics port (0: off)")
    run.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics server binds")
    run.add_argument("--workers", type=int, default=16, help="concurrent reconciles per kind")
    run.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run as one of several replicas: only the holder of a Lease reconciles (the chart turns it on)",
    )
    run.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace of the Lease (default: $POD_NAMESPACE, else default)",
    )
    run.add_argument("--leader-election-id", default="kubeforge-leader", help="name of the Lease")
    run.add_argument(
        "--shutdown-seconds",
        type=float,
        default=20.0,
        help="on SIGTERM, how long in-flight reconciles may take to finish (keep it below the pod's "
        "terminationGracePeriodSeconds)",
    )
    run.add_argument("--verbose", "-v", action="store_true")
    run.set_defaults(func=_cmd_run)

    crds = sub.add_parser("crds", help="print the CRDs, or write them into a folder")
    crds.add_argument("--out", help="folder to write <plural>.<group>.yaml files into")
    crds.set_defaults(func=_cmd_crds)

    front = sub.add_parser(
        "openai-front",
        help="(server pods) the OpenAI API (/v1/completions, /v1/chat/completions) over Triton",
    )
    front.add_argument("--host", default="0.0.0.0", help="address to listen on")
    front.add_argument("--port", type=int, default=9000)
    front.add_argument("--triton", default="http://127.0.0.1:8000", help="Triton's HTTP endpoint in the pod")
    front.add_argument(
        "--repository", default="/models", help="the model repository the init container laid out"
    )
    front.add_argument(
        "--model", action="append", required=True, help="a language model to serve (repeatable)"
    )
    front.set_defaults(func=_cmd_openai_front)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_cmd_version)

    # handled before parsing (main); listed here so that --help shows it
    sub.add_parser("assemble-repository", help="(init container) lay out a Triton model repository")
    sub.add_parser("fill-cache", help="(cache Job) fetch the models into the model cache once")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact_logs()  # no log line carries a URL's credential
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["assemble-repository"]:
        # argparse's REMAINDER refuses a first argument that starts with `--`: hand over untouched
        from kubeforge.triton.repository import main as assemble_main

        return assemble_main(argv[1:])
    if argv[:1] == ["fill-cache"]:
        from kubeforge.triton.cache import main as fill_main

        return fill_main(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
