"""Compiles the C core with cffi: cffi_modules has no pyproject.toml key."""
from setuptools import setup

setup(cffi_modules=["cext/build.py:ffibuilder"])
