#!/usr/bin/env python3
"""Generate the Python code of the v1 wire contract from proto/tessera/v1/*.proto.

The generated *_pb2.py, *_pb2_grpc.py and *.pyi files are committed and never edited by hand.
`--check` regenerates into a temporary folder and fails (exit 1) when the committed files differ,
so CI catches a .proto change whose code was not regenerated.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = PROTO_ROOT / "tessera" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi")


def _generate(out_root: Path) -> None:
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        venv_python = ROOT / ".venv" / "bin" / "python"
        if venv_python.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
            # Run with the project's environment (made by scripts/dev), which has grpcio-tools.
            os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
        sys.exit("grpcio-tools is not installed: run `scripts/dev test` or `pip install -e '.[dev]'` first.")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PACKAGE_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    # protoc finds the mypy plugins on PATH; they live beside the interpreter running this script.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if protoc.main(args) != 0:
        sys.exit("protoc failed; see the message above.")


def _generated_files(root: Path) -> set[str]:
    base = root / "tessera" / "v1"
    return {p.name for p in base.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _generate(out)
        fresh = _generated_files(out)
        if check:
            committed = _generated_files(PROTO_ROOT)
            stale = sorted(
                name
                for name in fresh | committed
                if name not in fresh
                or name not in committed
                or not filecmp.cmp(out / "tessera" / "v1" / name, PACKAGE_DIR / name, shallow=False)
            )
            if stale:
                print("generated protobuf code is out of date: " + ", ".join(stale), file=sys.stderr)
                print("run `python scripts/gen_protos.py` and commit the result", file=sys.stderr)
                return 1
            print(f"protobuf code up to date ({len(fresh)} files)")
            return 0
        for name in _generated_files(PROTO_ROOT) - fresh:
            (PACKAGE_DIR / name).unlink()
        for name in sorted(fresh):
            shutil.copyfile(out / "tessera" / "v1" / name, PACKAGE_DIR / name)
        print(f"wrote {len(fresh)} files to {PACKAGE_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
