"""Regenerate the committed gRPC code under kvfleet/common/proto from protos/.

Run from anywhere: ``python scripts/gen_protos.py``. The generated modules import each
other package-relatively, so ``kvfleet.common.proto`` works wherever kvfleet is installed.
``--check`` regenerates into a temporary directory and exits 1 if the committed code differs.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "kvfleet" / "common" / "proto"
HEADER = '"""Generated from protos/ by scripts/gen_protos.py. Do not edit."""\n'

_IMPORT = re.compile(r"^from kvfleet((?:\.\w+)*) import (\w+_pb2)", re.MULTILINE)


def _relativize(text: str, module_pkg: tuple[str, ...]) -> str:
    """Rewrite ``from kvfleet.a.b import x_pb2`` to a relative import from ``module_pkg``."""

    def sub(m: re.Match[str]) -> str:
        target = tuple(p for p in m.group(1).split(".") if p)
        common = 0
        while common < min(len(target), len(module_pkg)) and target[common] == module_pkg[common]:
            common += 1
        dots = "." * (len(module_pkg) - common + 1)
        rest = ".".join(target[common:])
        return f"from {dots}{rest} import {m.group(2)}"

    return _IMPORT.sub(sub, text)


def generate(out: Path) -> None:
    from grpc_tools import protoc  # imported here: only this script needs it

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        include = str(Path(protoc.__file__).parent / "_proto")
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if out.exists():
            shutil.rmtree(out)
        src_root = Path(tmp) / "kvfleet"
        for src in sorted(src_root.rglob("*")):
            rel = src.relative_to(src_root)
            dst = out / rel
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            text = _relativize(src.read_text(), rel.parent.parts)
            if src.suffix == ".py":
                text = HEADER + text
            dst.write_text(text)
    for d in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        init = d / "__init__.py"
        if not init.exists():
            init.write_text(HEADER)


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    if files_a != files_b:
        return False
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code differs")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "proto"
        generate(fresh)
        if not _same_tree(fresh, OUT):
            print("generated gRPC code is stale: run `make protos`", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
