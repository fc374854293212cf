"""Build fastgate's compiled cores when possible, install pure Python when not.

Set FASTGATE_NO_EXTENSIONS=1 to skip the Cython build on purpose. A missing compiler
or a failed compile is reported and the pure-Python references are used instead;
`fastgate status` says which implementation is loaded.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CORE_MODULES = ["pathnorm", "redact", "policy", "http1"]


class OptionalBuildExt(build_ext):
    """Compile what we can; never fail the install because a C compiler is missing."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # distutils raises several unrelated types here
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc):
        print(f"fastgate: compiled cores not built ({exc}); using the pure-Python references",
              file=sys.stderr)


def extensions():
    if os.environ.get("FASTGATE_NO_EXTENSIONS"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("fastgate: Cython not available; using the pure-Python references", file=sys.stderr)
        return []
    exts = [Extension(f"fastgate._core.{m}", [f"fastgate/_core/{m}.pyx"]) for m in CORE_MODULES]
    return cythonize(exts, compiler_directives={"language_level": "3", "boundscheck": False,
                                                "wraparound": False, "cdivision": True})


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
