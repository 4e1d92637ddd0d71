"""What Triton's Python-backend stub runs on: its Python packages and its libpython (no torch needed here).

The stub is a program that embeds Python (``libpython3.X.so.1.0``). Two things decide whether a model
such as Kubeforge's exported ``model.py`` runs in it:

- Its packages. The stub's Python runs isolated (``PYTHONPATH`` is ignored; seen in a model's
  ``sys.flags``) and takes its prefix, and so its site-packages and their ``.pth`` files, from the
  ``python3`` first on ``PATH`` (``TritonInstall.python_bin_dir``). Triton 2.51's Python backend
  (nvidia-pytriton 0.7, which requires numpy<2) misreads numpy 2 arrays: a python model's outputs
  come back with the wrong size ("output tensor shape does not match size of output") and a BYTES
  input is garbage (the stub aborts in ``deserialize_bytes_tensor``). The device's python3 has
  numpy 2, so run.sh makes a venv (``GPU_CHECK_STUB_VENV``) with numpy 1.26 first and that
  interpreter's own site-packages after it.
- Its libpython, which the stub's RUNPATH does not name: the dynamic loader must find it. A Python
  built without ``--enable-shared`` has none; a distribution's Python keeps it in its multiarch
  directory when the libpython3.X package is installed; others keep it in their own ``lib/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from kubeforge.testing.triton import TritonInstall, find_tritonserver


class StubEnvironmentError(RuntimeError):
    """The stub cannot run here: what is missing, and what would provide it."""


def stub_install(fig: dict[str, Any]) -> TritonInstall:
    """The tritonserver install, its stub pointed at ``GPU_CHECK_STUB_VENV`` when set; records what
    the stub will import (``stub_numpy``, ``stub_torch``) in ``fig``."""
    install = find_tritonserver()
    venv = os.environ.get("GPU_CHECK_STUB_VENV")
    if venv and (Path(venv) / "bin" / "python3").exists():
        install = dataclasses.replace(install, python_bin_dir=Path(venv) / "bin")
    elif venv:
        print(
            f"WARNING: GPU_CHECK_STUB_VENV={venv} has no bin/python3: the stub uses {install.python_bin_dir}"
        )
    python = install.python_bin_dir / "python3"
    probe = (
        "import numpy\n"
        "print(numpy.__version__, numpy.__file__)\n"
        "try:\n"
        "    import torch\n"
        "    print('torch', torch.__version__, torch.__file__)\n"
        "except ImportError as exc:\n"
        "    print('no torch:', exc)\n"
    )
    # -I: isolated, as the stub runs
    result = subprocess.run([str(python), "-I", "-c", probe], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise StubEnvironmentError(f"{python} -I cannot import numpy: {result.stderr.strip()[-500:]}")
    numpy_line, torch_line = result.stdout.strip().splitlines()[-2:]
    fig["stub_python"], fig["stub_numpy"], fig["stub_torch"] = str(python), numpy_line, torch_line
    if result.stderr.strip():
        fig["stub_probe_stderr"] = result.stderr.strip()[-500:]
    if not numpy_line.startswith("1."):
        print(f"WARNING: the stub will import numpy {numpy_line}: Triton 2.51's Python backend needs numpy<2")
    return install


def libpython_env(install: TritonInstall, fig: dict[str, Any]) -> dict[str, str]:
    """The environment to add for the stub to find libpython3.X.so.1.0 (empty when the loader already
    does); records where it was found in ``fig``. ``StubEnvironmentError`` when it is nowhere."""
    stub = install.backend_dir / "python" / "triton_python_backend_stub"
    env = install.environment()
    name = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    fig["stub"] = str(stub)
    fig["py_enable_shared"] = sysconfig.get_config_var("Py_ENABLE_SHARED")
    fig["python_libdir"] = sysconfig.get_config_var("LIBDIR")
    fig["python_real_executable"] = os.path.realpath(sys.executable)

    def resolved(extra: str | None) -> str | None:
        ld_env = dict(env)
        if extra:
            ld_env["LD_LIBRARY_PATH"] = f"{extra}:{ld_env.get('LD_LIBRARY_PATH', '')}"
        try:
            result = subprocess.run(
                ["ldd", str(stub)], capture_output=True, text=True, env=ld_env, timeout=30
            )
        except OSError as exc:  # no ldd: trust a directory that holds the file
            fig["ldd"] = f"unavailable ({exc})"
            return str(Path(extra) / name) if extra and (Path(extra) / name).exists() else None
        missing = [line.strip() for line in result.stdout.splitlines() if "not found" in line]
        fig["stub_missing_libraries"] = missing
        for line in result.stdout.splitlines():
            if name in line and "=>" in line:
                target = line.split("=>", 1)[1].strip()
                return None if target.startswith("not found") else target.split(" (")[0]
        return None

    found = resolved(None)
    if found:
        fig["libpython"] = found
        return {}
    # not on the loader's path: where this Python keeps its libraries first, then more widely
    candidates = [
        sysconfig.get_config_var("LIBDIR"),
        str(Path(sys.base_prefix) / "lib"),
        str(Path(os.path.realpath(sys.executable)).parent.parent / "lib"),
        "/usr/lib/x86_64-linux-gnu",
        "/usr/local/lib",
        "/usr/lib",
    ]
    for root in ("/opt", "/usr", "/root", "/home"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            search = subprocess.run(
                ["find", root, "-maxdepth", "7", "-name", name], capture_output=True, text=True, timeout=40
            )
            candidates += [str(Path(p).parent) for p in search.stdout.split()]
    for directory in dict.fromkeys(c for c in candidates if c):
        if (Path(directory) / name).exists():
            found = resolved(directory)
            if found:
                fig["libpython"] = found
                fig["libpython_via_LD_LIBRARY_PATH"] = directory
                return {"LD_LIBRARY_PATH": f"{directory}:{env.get('LD_LIBRARY_PATH', '')}"}
    raise StubEnvironmentError(
        f"Triton's Python-backend stub needs {name}, and this Python ({os.path.realpath(sys.executable)}, "
        f"Py_ENABLE_SHARED={sysconfig.get_config_var('Py_ENABLE_SHARED')}) has none on the loader's path "
        "nor anywhere under /opt, /usr, /root or /home: install the distribution's libpython3.X "
        "(Ubuntu: libpython3.12t64) or use a shared-library build of Python"
    )
