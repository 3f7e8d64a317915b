# The meta replies kvcache/_mcpipe.pyx calls (kvcache/_mcmeta.pyx).

from kvcache._mcwords cimport Op


cdef bytes _meta_echo(const char* p, Op* op, const char* code, Py_ssize_t ncode, bytes key)
cdef object _meta_get(const char* p, Op* op, bytes key, storage, set pinned,
                      long long[::1] hot)
cdef bytes _meta_delete(const char* p, Op* op, bytes key, storage)
cdef bytes _meta_arith(const char* p, Op* op, bytes key, storage, set pinned)
