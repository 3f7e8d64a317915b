"""Builds the Cython hot paths in native/; everything else is plain Python.

If Cython or a C compiler is missing the build still succeeds without the extensions and
`native` falls back to the pure-Python twins with a warning.
"""

from setuptools import setup

NATIVE_MODULES = ["native._snowflake", "native._resp", "native._ketama", "native._mcproto",
                  "native._kvarena", "native._kvlru", "native._kvstore", "native._crc16"]


def extensions() -> list:
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    from setuptools import Extension

    exts = [
        Extension(name, [name.replace(".", "/") + ".pyx"], extra_compile_args=["-O3"])
        for name in NATIVE_MODULES
    ]
    return cythonize(exts, language_level=3, quiet=True)


setup(ext_modules=extensions())
