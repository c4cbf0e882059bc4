"""The suite's own set-up: it never touches the user's cache, with or without pytest-xdist."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def test_the_run_uses_a_scratch_cache_of_its_own():
    cache = Path(os.environ["XDG_CACHE_HOME"])
    assert cache.is_dir() and cache.parent == Path(tempfile.gettempdir())
    assert cache.name.startswith("vitgrade-test-cache-")
