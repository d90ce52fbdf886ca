"""PEP 517 build backend: setuptools, plus mypy when the compiled parser is asked for.

``SCRAPY_SSE_COMPILE=1 pip install .`` compiles ``scrapy_sse/parser.py`` with mypyc
(the same source, typed already) into a C extension that replaces the module; without
it the package is pure Python. Only the build needs mypy, so it is added to the build
requirements here rather than to everyone's: setuptools alone cannot make a build
requirement depend on the environment.
"""

from __future__ import annotations

import os
from typing import Any

from setuptools.build_meta import *  # noqa: F403  (the rest of the backend, as is)

#: What the compiled build needs on top of setuptools.
COMPILE_REQUIRES = ["mypy>=1.10"]


def compile_requested() -> bool:
    return os.environ.get("SCRAPY_SSE_COMPILE", "") == "1"


# setuptools' own hooks would run setup.py to read ``setup_requires`` (there is none),
# and setup.py needs mypyc before these hooks could have asked for it.


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return list(COMPILE_REQUIRES) if compile_requested() else []


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return list(COMPILE_REQUIRES) if compile_requested() else []


def get_requires_for_build_sdist(config_settings: dict[str, Any] | None = None) -> list[str]:
    # (setup.py imports mypyc whenever the variable is set, even to make an sdist.)
    return list(COMPILE_REQUIRES) if compile_requested() else []
