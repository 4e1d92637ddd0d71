"""Repack a wheel smaller for the trip to the GPU machine (the working tree that travels has a size limit).

- ``--keep-stub X.Y`` (nvidia-pytriton): keep Triton's Python-backend stub for these Python versions
  only, and drop the bundled libpython3.13 that only the 3.13 stub loads (32 MB unpacked). Kubeforge
  runs `tritonserver` from the wheel's files (`kubeforge.testing.triton`), never PyTriton's Python code.
- ``--lzma``: recompress every member with LZMA instead of deflate (pip extracts wheels with Python's
  zipfile, which reads LZMA members); about 30 % smaller for shared libraries.

RECORD is rewritten to match; the name, tag and metadata are unchanged, so pip installs the result as
it would the original.

    python3 repack_wheel.py IN.whl OUT_DIR [--keep-stub 3.12] [--lzma]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import zipfile
from pathlib import Path

STUB = re.compile(r"^pytriton/tritonserver/python_backend_stubs/(\d+\.\d+)/")
BUNDLED_LIBPYTHON = re.compile(r"^nvidia_pytriton\.libs/libpython3-[0-9a-f]+\.\d+\.so")


def kept(name: str, stubs: set[str] | None) -> bool:
    if stubs is None:
        return True
    stub = STUB.match(name)
    if stub is not None:
        return stub.group(1) in stubs
    return BUNDLED_LIBPYTHON.match(name) is None


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repack(source: Path, out_dir: Path, stubs: set[str] | None, use_lzma: bool) -> Path:
    target = out_dir / source.name
    if target.resolve() == source.resolve():
        raise SystemExit("write the repacked wheel to another folder than the original")
    method = zipfile.ZIP_LZMA if use_lzma else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(source) as wheel:
        record_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
        members = [i for i in wheel.infolist() if i.filename != record_name and kept(i.filename, stubs)]
        if stubs is not None:
            found = {m.group(1) for i in members if (m := STUB.match(i.filename))}
            if stubs - found:
                raise SystemExit(f"{source.name} has no stub for Python {sorted(stubs - found)}")
        lines = []
        with zipfile.ZipFile(target, "w", method, compresslevel=None if use_lzma else 9) as out:
            for info in members:
                data = wheel.read(info)
                copy = zipfile.ZipInfo(info.filename, info.date_time)
                copy.external_attr = info.external_attr  # keeps the executables' mode bits
                copy.compress_type = method
                out.writestr(copy, data)
                if not info.filename.endswith("/"):
                    lines.append(record_line(info.filename, data))
            lines.append(f"{record_name},,")
            out.writestr(record_name, "\n".join(lines) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("wheel", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--keep-stub", action="append", help="nvidia-pytriton: a Python X.Y whose stub to keep"
    )
    parser.add_argument("--lzma", action="store_true", help="compress with LZMA")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    target = repack(args.wheel, args.out_dir, set(args.keep_stub) if args.keep_stub else None, args.lzma)
    size, original = target.stat().st_size / 2**20, args.wheel.stat().st_size / 2**20
    print(f"{target}: {size:.1f} MiB (from {original:.1f} MiB)")


if __name__ == "__main__":
    main()
