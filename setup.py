"""Package discovery for the four top-level folders, which install as ``thrifty.<folder>``.

The design card fixes the folders at the top level (``server/``, ``router/``, …) while the distribution
is one ``thrifty`` namespace; setuptools' own discovery cannot add that prefix, so it is added here.
Every subpackage (any folder with an ``__init__.py``) is found, so none can be left out of a wheel.
Everything else about the package lives in ``pyproject.toml``.
"""

from setuptools import find_packages, setup

ROOTS = ("server", "router", "budgeter", "moe_runtime")

setup(
    package_dir={f"thrifty.{root}": root for root in ROOTS},
    packages=[f"thrifty.{name}" for root in ROOTS for name in find_packages(include=[root, f"{root}.*"])],
)
