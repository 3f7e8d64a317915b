"""Builds the Cython hot paths: native/ (shared by more than one daemon) and kvcache/
(kvcache's own store, LRU, arena, parser and fast lane); everything else is plain Python.

If Cython or a C compiler is missing the build still succeeds without the extensions, and
`native` and `kvcache` fall back to the pure-Python twins with a warning.
"""

from setuptools import setup

NATIVE_MODULES = ["native._snowflake", "native._resp", "native._ketama", "native._crc16"]
# kvcache's own (kvcache/twins.py picks each compiled module or its pure twin).
KVCACHE_MODULES = ["kvcache._mcproto", "kvcache._mcpipe", "kvcache._mcmeta", "kvcache._kvarena",
                   "kvcache._kvlru", "kvcache._kvstore", "kvcache._proxylane"]


def extensions() -> list:
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    from setuptools import Extension

    exts = [
        Extension(name, [name.replace(".", "/") + ".pyx"], extra_compile_args=["-O3"])
        for name in NATIVE_MODULES + KVCACHE_MODULES
    ]
    return cythonize(exts, language_level=3, quiet=True)


setup(ext_modules=extensions())
