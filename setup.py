"""Only what pyproject.toml cannot say: the compiled KVM bindings.

All metadata lives in pyproject.toml. cffi (a build requirement there) compiles
runner.kvm._native from native/kvm/ with the builder in native/kvm/build.py, which stays out of
the wheel: only the compiled module is installed.
"""

from setuptools import setup

setup(cffi_modules=["native/kvm/build.py:ffibuilder"])
