"""checkov finds nothing in the rendered chart; every skip is annotated with its reason next to the object.

checkov lives in its own virtual environment (tests/chart/checkov.sh installs it once per machine under
~/.cache/kubeforge/tools): it pins many packages that must not meet the project's .venv.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from e2e.chart_support import Helm
from tests.chart.conftest import VALUE_SETS

CHECKOV_SCRIPT = Path(__file__).resolve().parent / "checkov.sh"
# The skips the chart's templates annotate (checkov.io/skipN: ID=reason), each with its reason there.
ALLOWED_SKIPS = {
    "CKV_K8S_38",  # the operator needs its ServiceAccount token: it talks to the API server
    "CKV_K8S_43",  # the tag is the appVersion unless image.digest is set
    "CKV_K8S_15",  # IfNotPresent with a release tag, unless a digest or pullPolicy Always
}


@pytest.fixture(scope="module")
def checkov() -> Path:
    result = subprocess.run(["bash", str(CHECKOV_SCRIPT)], stdout=subprocess.PIPE, text=True, check=True)
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report(checkov: Path, helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """checkov's results for every value set, by value set (one checkov run for all of them)."""
    folder = tmp_path_factory.mktemp("rendered")
    for name, values in VALUE_SETS.items():
        (folder / f"{name}.yaml").write_text(helm.template_text(values))
    result = subprocess.run(
        [
            str(checkov),
            "--directory",
            str(folder),
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: failed checks (shown by the tests)
    data = json.loads(result.stdout)
    reports = data if isinstance(data, list) else [data]
    kubernetes = next(r for r in reports if r.get("check_type") == "kubernetes")
    assert kubernetes["summary"]["parsing_errors"] == 0
    results = kubernetes["results"]
    by_file: dict[str, dict[str, Any]] = {
        name: {"passed": [], "failed": [], "skipped": []} for name in VALUE_SETS
    }
    for outcome in ("passed", "failed", "skipped"):
        for check in results.get(f"{outcome}_checks", []):
            by_file[Path(check["file_path"]).stem][outcome].append(check)
    return by_file


@pytest.mark.parametrize("name", VALUE_SETS)
def test_no_failed_checks(report: dict[str, dict[str, Any]], name: str) -> None:
    assert report[name]["passed"], "checkov ran no check"
    failed = [f"{c['check_id']} {c['check_name']} ({c['resource']})" for c in report[name]["failed"]]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_skip_is_justified(report: dict[str, dict[str, Any]], name: str) -> None:
    for check in report[name]["skipped"]:
        assert check["check_id"] in ALLOWED_SKIPS, check["check_id"]
        comment = (check.get("check_result") or {}).get("suppress_comment", "")
        assert comment and comment != "No comment provided", check["check_id"]


def test_a_pinned_digest_needs_no_image_skip(report: dict[str, dict[str, Any]]) -> None:
    skipped = {c["check_id"] for c in report["ha"]["skipped"]}
    assert skipped == {"CKV_K8S_38"}
