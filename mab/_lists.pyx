"""List operations of the request path, in C.

Both replace a Python loop over a request's ids (hundreds to thousands of
them) that cost more than the compiled work around it.
"""

import numpy as np

cimport numpy as cnp
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF
from cpython.unicode cimport PyUnicode_CheckExact
from libc.stdint cimport int64_t

cnp.import_array()


def first_non_str(list items):
    """Index of the first element that is not exactly a ``str``, or -1."""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(items)
    for i in range(n):
        if not PyUnicode_CheckExact(<object>PyList_GET_ITEM(items, i)):
            return i
    return -1


def take(list items, cnp.ndarray order):
    """``[items[i] for i in order]`` for an int64 array of valid indices."""
    if order.ndim != 1 or order.dtype != np.int64 or not order.flags.c_contiguous:
        raise ValueError("order must be a contiguous one-dimensional int64 array")
    cdef Py_ssize_t i, k = order.shape[0], n = PyList_GET_SIZE(items)
    cdef const int64_t *o = <const int64_t *>cnp.PyArray_DATA(order)
    for i in range(k):
        if not 0 <= o[i] < n:
            raise IndexError(f"index {o[i]} out of range for {n} items")
    cdef list out = PyList_New(k)
    cdef object item
    for i in range(k):
        item = <object>PyList_GET_ITEM(items, o[i])
        Py_INCREF(item)              # PyList_SET_ITEM steals a reference
        PyList_SET_ITEM(out, i, item)
    return out
