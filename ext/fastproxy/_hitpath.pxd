# Declarations of fastproxy._hitpath (implementation in ext/hitpath.pyx), so the relay
# can answer fresh cache hits without a Python call.
from fastproxy._http cimport Request
from libc.stdint cimport int64_t
from fastproxy._ringcache cimport RingCache


cdef class FreshHits:
    cdef RingCache ring
    cdef bytes ns                   # the listener's key namespace (caching.py)
    cdef bytes scheme               # b"http" or b"https" (the key's scheme)
    cdef bytes status_prefix        # b"Cache-Status: NAME; hit; ttl="
    cdef bytes x_keep               # lines after Age: Via (HTTP/1.1 keep-alive)
    cdef bytes x_keep10             # Via + Connection: keep-alive (HTTP/1.0 keep-alive)
    cdef bytes x_close              # Via + Connection: close
    cdef Py_ssize_t copy_max        # larger values' bodies are written from pinned views
    cdef public long long hits      # requests answered here
    cdef public int status          # status of the last answer
    cdef public long long body_len  # body bytes of the last answer
    cdef public object log_hit      # the access log's fields for a hit
    cdef public object negotiate    # compression.coding_for, None when the listener encodes nothing
    cdef dict memo                  # Accept-Encoding value -> the coding it negotiates

    cdef object serve(self, Request req, bint keep)
    cdef int64_t variant(self, Request req, bytes key, const unsigned char* v,
                         Py_ssize_t vlen, double now) except? -2
