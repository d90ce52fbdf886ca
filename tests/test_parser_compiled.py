"""The compiled parser (``SCRAPY_SSE_COMPILE=1 pip install .``) passes the parser tests.

mypyc compiles the same source, but with its own semantics in places (native integers,
type checks where a function is called, no instance ``__dict__``), so the build that
users can opt into is built here with the project's ``setup.py``, and the parser's and
the stream's test modules run against it in a child process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: What ``setup.py`` needs to build, copied so the checkout is never built in place.
_BUILD_FILES = ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in")


@pytest.mark.timeout(600)
def test_compiled_parser_passes_the_parser_tests(tmp_path: Path) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the compiled parser cannot be built")
    for name in _BUILD_FILES:
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("scrapy_sse", "build_backend"):
        shutil.copytree(
            ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "*.so")
        )
    env = {**os.environ, "SCRAPY_SSE_COMPILE": "1", "PYTHONPATH": str(tmp_path)}

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )

    build = run("setup.py", "build_ext", "--inplace")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    # ``--import-mode=append`` keeps the checkout behind the compiled copy on sys.path;
    # tests/conftest.py refuses to run if the parser imported is not the compiled one.
    tests = run(
        "-m",
        "pytest",
        str(ROOT / "tests" / "test_parser.py"),
        str(ROOT / "tests" / "test_stream.py"),
        "-q",
        "-p",
        "no:cacheprovider",
        "--import-mode=append",
        SCRAPY_SSE_EXPECT_COMPILED="1",
    )
    assert tests.returncode == 0, tests.stdout[-5000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout and "skipped" not in tests.stdout, tests.stdout[-2000:]
