"""Build hook: the sample journeys and templates ship inside the ``clm`` package.

The repository keeps one copy of each, at the top level (``journeys/``, ``templates/``), where
the project's own tests and the checkout's demo read them. A built package (wheel, or a
non-editable ``pip install``) gets them copied to ``clm/skeleton/`` so that an installed ``clm``
can ``init`` and ``demo`` anywhere. An editable install reads the checkout's copies.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("journeys", "templates")


class BuildWithSamples(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "clm" / "skeleton"
        for name in SHIPPED:
            shutil.copytree(ROOT / name, target / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithSamples})
