"""Kept for pip 21.3 / setuptools 59 (Python 3.6) editable installs; the metadata is in setup.cfg."""

from setuptools import setup

setup()
