"""Build the optional C extension (masking); everything else is in pyproject.toml.

``optional=True``: without a C compiler the package installs anyway and uses
the pure-Python masking in trio_ws/_mask.py.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("trio_ws._speedups", ["trio_ws/_speedups.c"], optional=True)])
