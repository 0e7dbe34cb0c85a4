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
* Each tied run is first put in ascending index order (one counting pass
  over the indices for all runs), so the result depends only on the scores
  and the seed, never on how the sort that preceded it arranged equal keys
  (numpy's sorts differ across versions and CPUs).
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
from libc.stdlib cimport free, malloc

from mab.sampling cimport Xoshiro256, xoshiro_next, xoshiro_seed

cnp.import_array()

#: The stream of the request's seed that breaks ties. Chunk streams are
#: numbered from 0 and there can never be 2**64 - 1 chunks, so it is apart.
TIE_STREAM = 2**64 - 1
cdef uint64_t _TIE_STREAM = 0xFFFFFFFFFFFFFFFFULL


cdef inline uint64_t _below(Xoshiro256 *rng, uint64_t bound) noexcept nogil:
    # Uniform on [0, bound), bound >= 1. The accepted draws [threshold, 2**64)
    # number a multiple of bound, so the modulo is unbiased.
    cdef uint64_t threshold = (<uint64_t>0 - bound) % bound
    cdef uint64_t r
    while True:
        r = xoshiro_next(rng)
        if r >= threshold:
            return r % bound


cdef void _shuffle(Xoshiro256 *rng, int64_t *run, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef int64_t t
    for i in range(m - 1, 0, -1):
        j = <Py_ssize_t>_below(rng, <uint64_t>(i + 1))
        t = run[i]
        run[i] = run[j]
        run[j] = t


cdef Py_ssize_t _shuffle_runs(const double *key, int64_t *o, Py_ssize_t m, Py_ssize_t n,
                              uint64_t seed) noexcept nogil:
    # Returns the number of runs, or -1 when memory ran out (nothing changed).
    cdef Py_ssize_t max_runs = m // 2 + 1
    cdef int64_t *run_of = <int64_t *>malloc(n * sizeof(int64_t))
    cdef Py_ssize_t *first = <Py_ssize_t *>malloc(max_runs * sizeof(Py_ssize_t))
    cdef Py_ssize_t *stop = <Py_ssize_t *>malloc(max_runs * sizeof(Py_ssize_t))
    cdef Py_ssize_t *cursor = <Py_ssize_t *>malloc(max_runs * sizeof(Py_ssize_t))
    cdef Py_ssize_t i, j, r, runs = 0
    cdef int64_t index
    cdef double value
    cdef Xoshiro256 rng
    if run_of == NULL or first == NULL or stop == NULL or cursor == NULL:
        runs = -1
    else:
        for i in range(n):
            run_of[i] = -1
        i = 1
        while i < m:
            if key[o[i]] != key[o[i - 1]]:
                i += 1
                continue
            value = key[o[i - 1]]
            first[runs] = i - 1
            while i < m and key[o[i]] == value:
                i += 1
            stop[runs] = i
            for j in range(first[runs], i):
                run_of[o[j]] = runs
            cursor[runs] = first[runs]
            runs += 1
        # Every run in ascending index order, by one counting pass over the
        # indices: O(n), and independent of how the sort arranged the run.
        for index in range(n):
            r = run_of[index]
            if r >= 0:
                o[cursor[r]] = index
                cursor[r] += 1
        xoshiro_seed(&rng, seed, _TIE_STREAM)
        for r in range(runs):
            _shuffle(&rng, o + first[r], stop[r] - first[r])
    free(run_of)
    free(first)
    free(stop)
    free(cursor)
    return runs


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
        Distinct valid indices into ``keys`` (all of them or some) with
        ``keys[order]`` non-decreasing. Every maximal run ``order[i:j]`` of
        equal keys (``==``, so -0.0 ties 0.0 and NaN ties nothing) is
        replaced by a uniformly random permutation of its indices.
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
        Arrays of the wrong dtype, shape or layout.
    IndexError
        An index out of range (``order`` is then unchanged).
    MemoryError
        No memory for the O(len(keys)) scratch space that ties need.
    """
    if not _is_float64_vector(keys):
        raise ValueError("keys must be a contiguous one-dimensional float64 array")
    if not _is_int64_vector(order):
        raise ValueError("order must be a writeable, contiguous, one-dimensional int64 array")
    cdef const double *key = <const double *>cnp.PyArray_DATA(keys)
    cdef int64_t *o = <int64_t *>cnp.PyArray_DATA(order)
    cdef Py_ssize_t n = cnp.PyArray_DIM(keys, 0)
    cdef Py_ssize_t m = cnp.PyArray_DIM(order, 0)
    cdef Py_ssize_t i
    cdef Py_ssize_t runs
    cdef Py_ssize_t bad = -1
    cdef bint tied = False
    cdef double value, previous = 0.0
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
        runs = _shuffle_runs(key, o, m, n, seed)
    if runs < 0:
        raise MemoryError("no memory to break ties")
    return runs
