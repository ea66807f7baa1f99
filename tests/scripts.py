"""The runnable scripts (``experiments/``, ``paper/``) as modules, for their tests.

Each script is loaded once per test process (`functools.cache`): the tests of one file
then share its module-level jitted functions, so a test that reruns a script (a resume
after a kill, a second configuration) reuses the fixture's compiled programs instead of
compiling them again (the conftest drops compiled programs after each test module).
"""

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def load_script(relative_path: str) -> ModuleType:
    """The script at `relative_path` (from the repository root) imported as a module."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
