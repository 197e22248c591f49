"""Enumerate every subpackage under the mapped top-level folders so wheels are complete."""

import os

from setuptools import setup

ROOTS = {"neurofabric.hdl": "hdl", "neurofabric.host": "host", "neurofabric.sim": "sim", "neurofabric.boards": "boards", "neurofabric.demos": "demos"}


def subpackages():
    """Every folder under the mapped roots: those with an ``__init__.py`` and data-only folders
    such as sim/cpp (setuptools treats any folder as a package; listing the data folders keeps
    it from warning that they are missing)."""
    packages = ["neurofabric"]
    for package, folder in ROOTS.items():
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
            if filenames:
                packages.append(package + dirpath[len(folder):].replace(os.sep, "."))
    return packages


setup(packages=subpackages())
