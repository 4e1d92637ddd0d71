"""`make manifests`: write every generated file (CRDs, the chart's CRDs, docs/api.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from kubeforge.api.crd import HEADER, render_api_reference, rendered_crds
from kubeforge.builders.autoscaling import prometheus_adapter_rules


def generated_files(root: Path) -> dict[Path, str]:
    """Path -> content of every file generated from the API models."""
    files: dict[Path, str] = {}
    for name, text in rendered_crds().items():
        files[root / "crds" / name] = text
        if (root / "charts" / "kubeforge").is_dir():
            files[root / "charts" / "kubeforge" / "crds" / name] = text
    files[root / "docs" / "api.md"] = render_api_reference()
    # values for the prometheus-community/prometheus-adapter chart: the HPA's Triton metrics
    adapter = HEADER + "# Values for prometheus-adapter: `helm install ... -f` this file.\n"
    files[root / "charts" / "prometheus-adapter-rules.yaml"] = adapter + yaml.safe_dump(
        prometheus_adapter_rules(), sort_keys=False, width=200
    )
    return files


def main() -> int:
    root = Path.cwd()
    for path, text in generated_files(root).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
