"""`make manifests`: write every generated file (CRDs, the chart's CRDs, docs/api.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from kubeforge.api.crd import render_api_reference, rendered_crds


def generated_files(root: Path) -> dict[Path, str]:
    """Path -> content of every file generated from the API models."""
    files: dict[Path, str] = {}
    for name, text in rendered_crds().items():
        files[root / "crds" / name] = text
        if (root / "charts" / "kubeforge").is_dir():
            files[root / "charts" / "kubeforge" / "crds" / name] = text
    files[root / "docs" / "api.md"] = render_api_reference()
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
