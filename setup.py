"""Only what pyproject.toml cannot say: the native parts, compiled at install time.

All metadata lives in pyproject.toml. cffi (a build requirement there) compiles
runner.kvm._native from native/kvm/ with the builder in native/kvm/build.py. The same build
step compiles the guest's static init (native/init/build.py) into runner/guest/init, with the
digest of its sources beside it (runner/guest/init.digest) so that a checkout whose sources
moved on rebuilds it (runner/guest/initramfs.py). The builders stay out of the wheel.
"""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
INIT_FILES = ("init", "init.digest")


def _init_builder():
    path = ROOT / "native" / "init" / "build.py"
    spec = importlib.util.spec_from_file_location("vmrun_init_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildNative(build_ext):
    """The cffi extension, then the guest init, into the build tree (and the source tree for
    in-place and editable builds, as the extension is)."""

    def run(self) -> None:
        super().run()
        builder = _init_builder()
        target = Path(self.build_lib) / "runner" / "guest"
        builder.build_init(str(target / "init"))
        (target / "init.digest").write_text(builder.source_digest() + "\n")
        if self.inplace or getattr(self, "editable_mode", False):
            for name in INIT_FILES:
                shutil.copy2(target / name, ROOT / "runner" / "guest" / name)

    def get_outputs(self) -> list[str]:
        target = Path(self.build_lib) / "runner" / "guest"
        return [*super().get_outputs(), *(str(target / name) for name in INIT_FILES)]


setup(
    cffi_modules=["native/kvm/build.py:ffibuilder"],
    cmdclass={"build_ext": BuildNative},
)
