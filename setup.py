"""Setuptools entry point: only the optional compiled parser needs code here.

With ``SCRAPY_SSE_COMPILE=1`` (see ``build_backend/scrapy_sse_build.py``) mypyc
compiles ``scrapy_sse/parser.py``; everything else is declared in ``pyproject.toml``.
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import setup

ext_modules: list[Any] = []
if os.environ.get("SCRAPY_SSE_COMPILE", "") == "1":
    from mypyc.build import mypycify

    # The build environment has none of the runtime dependencies: check the parser
    # module itself, not what it imports (``scripts/test.sh`` type-checks everything).
    ext_modules = mypycify(
        ["--follow-imports=silent", "--ignore-missing-imports", "scrapy_sse/parser.py"],
        opt_level="3",
    )

setup(ext_modules=ext_modules)
