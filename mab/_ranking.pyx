"""Fair tie-breaking for ``mab.service.rank``, in C.

Scores that are exactly equal must come in a uniformly random order that a
request's seed reproduces. Ties are rare (float64 rounds the extreme tails of
Beta variates to exactly 0 or 1, or huge equal counts give equal scores), so
the common path is one compiled scan that finds none; only tied runs are
touched.

Randomness comes from the sampler's own generator (``mab.sampling``:
xoshiro256++ seeded through SplitMix64) on the stream ``TIE_STREAM`` of the
request's seed. The scores use the streams ``0, 1, ...`` (one per chunk of
``mab.sampling.CHUNK_SIZE`` elements), so breaking ties never changes a
score, and the scores never depend on whether ties were broken.

Algorithms
----------
* Each tied run is first put in ascending index order, so the result depends
  only on the scores and the seed, never on how the sort that preceded it
  happened to arrange equal keys (numpy's sorts differ across versions and
  CPUs).
* The run is then permuted by the Fisher-Yates shuffle in Durstenfeld's form
  (R. Durstenfeld, "Algorithm 235: Random permutation", CACM 7(7), 1964;
  D. Knuth, TAOCP vol. 2, 3.4.2, Algorithm P).
* Its bounded integers are unbiased: a 64-bit draw below ``2**64 mod bound``
  is rejected before the modulo (the method of OpenBSD's arc4random_uniform;
  D. Lemire, "Fast random integer generation in an interval", ACM TOMACS
  29(1), 2019, section 2).
"""

cimport numpy as cnp
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport qsort

from mab.sampling cimport Xoshiro256, xoshiro_next, xoshiro_seed

cnp.import_array()

#: The stream of the request's seed that breaks ties. Chunk streams are
#: numbered from 0 and there can never be 2**64 - 1 chunks, so it is apart.
TIE_STREAM = 2**64 - 1
cdef uint64_t _TIE_STREAM = 0xFFFFFFFFFFFFFFFFULL


cdef int _compare_int64(const void *a, const void *b) noexcept nogil:
    cdef int64_t x = (<const int64_t *>a)[0]
    cdef int64_t y = (<const int64_t *>b)[0]
    return (x > y) - (x < y)


cdef inline uint64_t _below(Xoshiro256 *rng, uint64_t bound) noexcept nogil:
    # Uniform on [0, bound), bound >= 1. The accepted draws [threshold, 2**64)
    # number a multiple of bound, so the modulo is unbiased.
    cdef uint64_t threshold = (<uint64_t>0 - bound) % bound
    cdef uint64_t r
    while True:
        r = xoshiro_next(rng)
        if r >= threshold:
            return r % bound


cdef void _shuffle_run(Xoshiro256 *rng, int64_t *run, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef int64_t t
    qsort(run, m, sizeof(int64_t), _compare_int64)
    for i in range(m - 1, 0, -1):
        j = <Py_ssize_t>_below(rng, <uint64_t>(i + 1))
        t = run[i]
        run[i] = run[j]
        run[j] = t


cdef inline bint _is_float64_vector(cnp.ndarray a):
    return cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT64 and cnp.PyArray_NDIM(a) == 1 and cnp.PyArray_IS_C_CONTIGUOUS(a)


cdef inline bint _is_int64_vector(cnp.ndarray a):
    return (cnp.PyArray_TYPE(a) == cnp.NPY_INT64 and cnp.PyArray_NDIM(a) == 1
            and cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISWRITEABLE(a))


def break_ties(cnp.ndarray keys, cnp.ndarray order, uint64_t seed):
    """Shuffle, in place, every run of equal keys in an order sorted by key.

    Parameters
    ----------
    keys : ndarray of float64, one-dimensional, contiguous
        The sort keys (the service passes negated scores).
    order : ndarray of int64, one-dimensional, contiguous, writeable
        Valid indices into ``keys`` with ``keys[order]`` non-decreasing. A
        maximal run ``order[i:j]`` of equal keys (``==``, so -0.0 ties 0.0
        and NaN ties nothing) is replaced by a uniformly random permutation
        of its indices.
    seed : int in [0, 2**64)
        The request's seed; runs are shuffled best first from its stream
        ``TIE_STREAM``, so the shuffle of a run depends only on the seed,
        the runs before it and its own set of indices. Hence ranking the best
        ``k`` with the same seed gives a prefix of the full ranking.

    Returns
    -------
    int
        The number of runs shuffled (0: no ties, nothing was drawn).

    Raises
    ------
    ValueError
        Arrays of the wrong dtype, shape or layout, or an index out of range.
    """
    if not _is_float64_vector(keys):
        raise ValueError("keys must be a contiguous one-dimensional float64 array")
    if not _is_int64_vector(order):
        raise ValueError("order must be a writeable, contiguous, one-dimensional int64 array")
    cdef const double *key = <const double *>cnp.PyArray_DATA(keys)
    cdef int64_t *o = <int64_t *>cnp.PyArray_DATA(order)
    cdef Py_ssize_t n = cnp.PyArray_DIM(keys, 0)
    cdef Py_ssize_t m = cnp.PyArray_DIM(order, 0)
    cdef Py_ssize_t i, start
    cdef Py_ssize_t runs = 0
    cdef Py_ssize_t bad = -1
    cdef bint tied = False
    cdef double value, previous = 0.0
    cdef Xoshiro256 rng
    with nogil:
        # The common path: one pass that checks the indices and finds no tie.
        for i in range(m):
            if <uint64_t>o[i] >= <uint64_t>n:
                bad = i
                break
            value = key[o[i]]
            if i and value == previous:
                tied = True
            previous = value
    if bad >= 0:
        raise IndexError(f"order[{bad}] = {o[bad]} is out of range for {n} keys")
    if not tied:
        return 0
    with nogil:
        xoshiro_seed(&rng, seed, _TIE_STREAM)
        i = 1
        while i < m:
            if key[o[i]] != key[o[i - 1]]:
                i += 1
                continue
            start = i - 1
            previous = key[o[start]]
            while i < m and key[o[i]] == previous:
                i += 1
            _shuffle_run(&rng, o + start, i - start)
            runs += 1
    return runs
