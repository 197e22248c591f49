"""Enumerate every subpackage under the mapped top-level folders so wheels are complete."""

import os

from setuptools import setup

ROOTS = {"neurofabric.hdl": "hdl", "neurofabric.host": "host", "neurofabric.sim": "sim", "neurofabric.boards": "boards", "neurofabric.demos": "demos"}


def subpackages():
    packages = ["neurofabric"]
    for package, folder in ROOTS.items():
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
            if "__init__.py" in filenames:
                packages.append(package + dirpath[len(folder):].replace(os.sep, "."))
    return packages


setup(packages=subpackages())
