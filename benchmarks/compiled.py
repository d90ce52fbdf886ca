"""The compiled parser beside the pure-Python one, in the same process.

``SCRAPY_SSE_COMPILE=1 pip install .`` replaces ``scrapy_sse.parser`` with its mypyc
build. On a noisy host only interleaved runs in one process compare fairly, and one
process cannot import two modules named ``scrapy_sse.parser``; so the checkout's parser
is compiled once more under another name, ``scrapy_sse._parser_compiled``, into
``benchmarks/.compiled/<digest>/`` (reused while the source and mypy are unchanged)
and imported through the package's ``__path__``, sharing ``SSEEvent`` and the errors
with the pure module.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".compiled"
NAME = "_parser_compiled"

_BUILD = f"""
from mypyc.build import mypycify
from setuptools import setup
setup(
    name="scrapy-sse-bench-parser",
    ext_modules=mypycify(
        ["--follow-imports=silent", "--ignore-missing-imports", "scrapy_sse/{NAME}.py"],
        opt_level="3",
    ),
    script_args=["build_ext", "--inplace"],
)
"""


def _digest(source: bytes) -> str:
    """The build's inputs: the parser, the modules whose types it compiles against,
    mypy and the Python it was built for."""
    import mypy.version

    digest = hashlib.sha256(source)
    for name in ("events.py", "errors.py"):
        digest.update((ROOT / "scrapy_sse" / name).read_bytes())
    digest.update(f"{mypy.version.__version__} {sys.version}".encode())
    return digest.hexdigest()[:16]


def _build(source: bytes, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "scrapy_sse"
        shutil.copytree(
            ROOT / "scrapy_sse", package, ignore=shutil.ignore_patterns("__pycache__", "*.so")
        )
        (package / f"{NAME}.py").write_bytes(source)
        done = subprocess.run(
            [sys.executable, "-c", _BUILD],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode:
            raise RuntimeError("mypyc build failed:\n" + done.stdout[-2000:] + done.stderr[-2000:])
        staging = out.with_name(out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for built in package.glob(f"{NAME}*.so"):
            shutil.copy(built, staging / built.name)
        staging.rename(out)


def load_compiled_parser() -> type[Any]:
    """``SSEParser`` from a mypyc build of the checkout's ``scrapy_sse/parser.py``."""
    import scrapy_sse

    source = (ROOT / "scrapy_sse" / "parser.py").read_bytes()
    out = CACHE / _digest(source)
    if not out.exists():
        print("Compiling the parser with mypyc (about a minute, once)...", flush=True)
        _build(source, out)
    if str(out) not in scrapy_sse.__path__:
        scrapy_sse.__path__.append(str(out))
    module = importlib.import_module(f"scrapy_sse.{NAME}")
    if not module.COMPILED:
        raise RuntimeError(f"{module.__file__} is not a compiled module")
    parser: type[Any] = module.SSEParser
    return parser
