from libc.stdint cimport int64_t


cdef class IdSpans:
    cdef readonly bytes body
    cdef const char *data
    cdef object _starts, _lengths
    cdef const int64_t *starts
    cdef const int64_t *lengths
    cdef readonly Py_ssize_t n
