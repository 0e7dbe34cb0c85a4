"""Batch sampling of Beta variates, compiled and parallel.

``sample_beta(alpha, beta)`` draws one Beta(alpha[i], beta[i]) variate per
element. The work is split into fixed chunks of ``CHUNK_SIZE`` elements; each
chunk owns an independent random stream derived from ``(seed, chunk index)``,
and chunks run in parallel with OpenMP ``prange`` when more than one thread is
asked for. Because streams belong to chunks and never to threads, a seeded
call returns the same numbers whatever the thread count.

Algorithms
----------
* Uniform bits: xoshiro256++ (D. Blackman and S. Vigna, "Scrambled linear
  pseudorandom number generators", ACM TOMS 47(4), 2021), one generator per
  chunk, its state expanded from (seed, chunk) with SplitMix64 (G. Steele,
  D. Lea and C. Flood, "Fast splittable pseudorandom number generators",
  OOPSLA 2014).
* Normal variates: the ziggurat method with 256 layers (G. Marsaglia and
  W. W. Tsang, "The ziggurat method for generating random variables", J. Stat.
  Software 5(8), 2000), in the 64-bit layout numpy uses.
* Gamma variates, shape >= 1: G. Marsaglia and W. W. Tsang, "A simple method
  for generating gamma variables", ACM TOMS 26(3), 2000, with its squeeze.
* Gamma variates, shape < 1: Gamma(a) = Gamma(a + 1) * U**(1/a) (same paper),
  evaluated in log space, log Gamma(a) = log Gamma(a + 1) + log(U) / a, as
  recommended for small shapes by C. Liu, R. Martin and N. Syring,
  "Simulating from a gamma distribution with small shape parameter",
  Computational Statistics 32, 2017. Without the log, U**(1/a) underflows to
  0 for a around 1e-3 and X / (X + Y) becomes 0 / 0.
* Beta variates: X / (X + Y) with X ~ Gamma(alpha), Y ~ Gamma(beta)
  (L. Devroye, "Non-Uniform Random Variate Generation", 1986, ch. IX.4).
  When either shape is below 1, or above 1e300 where X + Y could overflow,
  the ratio is formed in log space as 1 / (1 + exp(log Y - log X)), which
  cannot produce NaN.

Supported shapes: every finite double > 0, subnormals included. Values are
in [0, 1], never NaN and never -0.0. For shapes below about 1e-308,
log(U) / a overflows to -inf; that is still exact. Write E = -log(U), an
Exp(1) variate, so log X = log Gamma(a + 1) - E / a. If only log X
overflows, then E / a is above DBL_MAX while the E / b of Y is not: X < Y,
which the ratio 0 states correctly, and its true value differs from 0 only
if E / a and E / b fall within about 745 of each other near 1e308, a chance
below 1e-300. If both overflow, the ratio is 0 or 1 to the same precision,
and which one follows P(E1 / a < E2 / b) = a / (a + b): by the
memorylessness of the exponential this holds also given that both are above
DBL_MAX, so a coin with that probability is exact. The O(1) terms
log Gamma(a + 1) shift these comparisons with a chance below 1e-300 too;
the coin's uniform has a resolution of 2**-53.
"""

import os

import numpy as np

cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport INFINITY, M_PI, erfc, exp, log, sqrt
from libc.stdint cimport int64_t, uint64_t

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    #define MAB_HAVE_OPENMP 1
    #else
    #define MAB_HAVE_OPENMP 0
    #endif
    """
    int MAB_HAVE_OPENMP

#: Elements per random stream. Part of the definition of a seeded result:
#: changing it changes every seeded output.
CHUNK_SIZE = 2048
cdef Py_ssize_t _CHUNK = CHUNK_SIZE

#: Whether this build runs chunks in parallel (compiled with OpenMP).
HAVE_OPENMP = bool(MAB_HAVE_OPENMP)

#: Environment variable read by resolve_n_threads().
THREADS_ENV = "MAB_SAMPLER_THREADS"

# Shapes above this take the log-space path so that X + Y cannot overflow.
cdef double _HUGE_SHAPE = 1e300

# --------------------------------------------------------------------------
# xoshiro256++ seeded through SplitMix64
# --------------------------------------------------------------------------

cdef inline uint64_t _rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef inline uint64_t _splitmix64(uint64_t *state) noexcept nogil:
    state[0] += 0x9E3779B97F4A7C15ULL
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef void xoshiro_seed(Xoshiro256 *rng, uint64_t seed, uint64_t stream) noexcept nogil:
    # Two SplitMix64 rounds key the stream on both numbers, so (seed, stream)
    # pairs never share a SplitMix64 sequence the way seed + k * gamma would.
    cdef uint64_t key = seed
    key = _splitmix64(&key) ^ stream
    key = _splitmix64(&key)
    rng.s[0] = _splitmix64(&key)
    rng.s[1] = _splitmix64(&key)
    rng.s[2] = _splitmix64(&key)
    rng.s[3] = _splitmix64(&key)


cdef inline uint64_t xoshiro_next(Xoshiro256 *rng) noexcept nogil:
    cdef uint64_t *s = rng.s
    cdef uint64_t result = _rotl(s[0] + s[3], 23) + s[0]
    cdef uint64_t t = s[1] << 17
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 45)
    return result


cdef inline double uniform_open(Xoshiro256 *rng) noexcept nogil:
    # 53 random bits, offset by half a step: k/2^53 + 2^-54 lies in (0, 1).
    # Converted through int64 because x86-64 has no fast uint64 -> double.
    return (<double><int64_t>(xoshiro_next(rng) >> 11) + 0.5) * (1.0 / 9007199254740992.0)


# --------------------------------------------------------------------------
# Ziggurat normal (256 layers)
# --------------------------------------------------------------------------

cdef double _ZIG_R = 3.6541528853610088        # right edge of the base layer
cdef double _ZIG_INV_R = 1.0 / 3.6541528853610088
cdef uint64_t _zig_k[256]
cdef double _zig_w[256]
cdef double _zig_f[256]
cdef double _SIGN[2]
_SIGN[0] = 1.0
_SIGN[1] = -1.0


cdef void _ziggurat_setup() noexcept nogil:
    # Marsaglia and Tsang (2000), procedure zigset, for 256 layers and
    # 52-bit magnitudes. The layer area v is derived from r rather than
    # typed in, so the tables are consistent to double precision.
    cdef double m = 4503599627370496.0          # 2**52
    cdef double dn = _ZIG_R
    cdef double tn = dn
    cdef double f_r = exp(-0.5 * dn * dn)
    cdef double v = dn * f_r + sqrt(M_PI / 2.0) * erfc(dn / sqrt(2.0))
    cdef double q = v / f_r
    cdef int i
    _zig_k[0] = <uint64_t>((dn / q) * m)
    _zig_k[1] = 0
    _zig_w[0] = q / m
    _zig_w[255] = dn / m
    _zig_f[0] = 1.0
    _zig_f[255] = f_r
    for i in range(254, 0, -1):
        dn = sqrt(-2.0 * log(v / dn + exp(-0.5 * dn * dn)))
        _zig_k[i + 1] = <uint64_t>((dn / tn) * m)
        tn = dn
        _zig_f[i] = exp(-0.5 * dn * dn)
        _zig_w[i] = dn / m


_ziggurat_setup()


cdef double _normal_slow(Xoshiro256 *rng, int idx, double x, int negative) noexcept nogil:
    # The ~1% of ziggurat draws that land outside the layer's rectangle.
    cdef double xx, yy
    if idx == 0:
        # The tail beyond r, by Marsaglia's exponential rejection.
        while True:
            xx = -_ZIG_INV_R * log(uniform_open(rng))
            yy = -log(uniform_open(rng))
            if yy + yy > xx * xx:
                return -(_ZIG_R + xx) if negative else _ZIG_R + xx
    if (_zig_f[idx - 1] - _zig_f[idx]) * uniform_open(rng) + _zig_f[idx] < exp(-0.5 * x * x):
        return x
    return standard_normal(rng)


cdef inline double _normal(Xoshiro256 *rng) noexcept nogil:
    # The fast path, inlined into the gamma loop; everything else is out of line.
    cdef uint64_t r = xoshiro_next(rng)
    cdef int idx = <int>(r & 0xFF)
    r >>= 8
    cdef int negative = <int>(r & 1)
    cdef uint64_t rabs = (r >> 1) & 0x000FFFFFFFFFFFFFULL
    # Multiplied by +-1 from a table rather than branching on a coin flip,
    # which the CPU would mispredict half the time (this halves the cost).
    cdef double x = <double><int64_t>rabs * _zig_w[idx] * _SIGN[negative]
    if rabs < _zig_k[idx]:
        return x                          # inside the rectangle: ~99% of draws
    return _normal_slow(rng, idx, x, negative)


cdef double standard_normal(Xoshiro256 *rng) noexcept nogil:
    return _normal(rng)


# --------------------------------------------------------------------------
# Gamma and Beta
# --------------------------------------------------------------------------

cdef inline double _marsaglia_tsang(Xoshiro256 *rng, double shape, double *log_v) noexcept nogil:
    # Returns d and stores log(v) when log_v is not NULL (the log-space
    # callers); otherwise returns d * v. shape >= 1.
    cdef double d = shape - 1.0 / 3.0
    cdef double c = 1.0 / sqrt(9.0 * d)
    cdef double x, v, u, xx
    while True:
        while True:
            x = _normal(rng)
            v = 1.0 + c * x
            if v > 0.0:
                break
        v = v * v * v
        u = uniform_open(rng)
        xx = x * x
        if u < 1.0 - 0.0331 * xx * xx or log(u) < 0.5 * xx + d * (1.0 - v + log(v)):
            if log_v != NULL:
                log_v[0] = log(v)
                return d
            return d * v


cdef double standard_gamma(Xoshiro256 *rng, double shape) noexcept nogil:
    if shape < 1.0:
        return exp(log_standard_gamma(rng, shape))
    return _marsaglia_tsang(rng, shape, NULL)


cdef double log_standard_gamma(Xoshiro256 *rng, double shape) noexcept nogil:
    cdef double log_v, d
    if shape < 1.0:
        d = _marsaglia_tsang(rng, shape + 1.0, &log_v)
        return log(d) + log_v + log(uniform_open(rng)) / shape
    d = _marsaglia_tsang(rng, shape, &log_v)
    return log(d) + log_v


cdef double beta_variate(Xoshiro256 *rng, double a, double b) noexcept nogil:
    cdef double x, y, diff
    if a >= 1.0 and b >= 1.0 and a < _HUGE_SHAPE and b < _HUGE_SHAPE:
        x = _marsaglia_tsang(rng, a, NULL)
        y = _marsaglia_tsang(rng, b, NULL)
        return x / (x + y)
    diff = log_standard_gamma(rng, b) - log_standard_gamma(rng, a)
    if diff > 0.0:
        # exp(-diff) underflows gradually through the subnormals, whereas
        # 1 / (1 + exp(diff)) would jump to exactly 0 once exp overflows.
        diff = exp(-diff)
        return diff / (1.0 + diff)
    if diff <= 0.0:
        return 1.0 / (1.0 + exp(diff))
    # NaN: both logs are -inf, because log(U) / shape overflowed in both
    # (shapes below about 1e-308). Which of X and Y is larger is then a coin
    # with P(X > Y) = a / (a + b) exactly, and the ratio is 0 or 1 (see the
    # module docstring). The probability is formed before the comparison:
    # U * (a + b) < a rounds in the subnormal range, where a = b = 5e-324
    # gave P(1) = 0.25 instead of 0.5.
    return 1.0 if uniform_open(rng) < a / (a + b) else 0.0


# --------------------------------------------------------------------------
# The batch kernel
# --------------------------------------------------------------------------

cdef inline void _fill_chunk(const double *alpha, const double *beta, double *out,
                             Py_ssize_t n, uint64_t seed, Py_ssize_t chunk) noexcept nogil:
    cdef Xoshiro256 rng
    cdef Py_ssize_t i
    cdef Py_ssize_t start = chunk * _CHUNK
    cdef Py_ssize_t stop = start + _CHUNK
    if stop > n:
        stop = n
    xoshiro_seed(&rng, seed, <uint64_t>chunk)
    for i in range(start, stop):
        out[i] = beta_variate(&rng, alpha[i], beta[i])


cdef void fill_beta(const double *alpha, const double *beta, double *out,
                    Py_ssize_t n, uint64_t seed, int n_threads) noexcept nogil:
    cdef Py_ssize_t n_chunks = (n + _CHUNK - 1) // _CHUNK
    cdef Py_ssize_t chunk
    if n_threads <= 1 or n_chunks <= 1 or not MAB_HAVE_OPENMP:
        # No parallel region at all: nothing for libgomp to spin on, and
        # nothing that could break a later fork of this process.
        for chunk in range(n_chunks):
            _fill_chunk(alpha, beta, out, n, seed, chunk)
        return
    for chunk in prange(n_chunks, num_threads=n_threads, schedule="dynamic"):
        _fill_chunk(alpha, beta, out, n, seed, chunk)


# --------------------------------------------------------------------------
# Python API
# --------------------------------------------------------------------------

def resolve_n_threads(n_threads=None):
    """Decide how many threads the sampler uses; the one place that does.

    An explicit ``n_threads`` wins; otherwise the ``MAB_SAMPLER_THREADS``
    environment variable; otherwise 1. One is the default because the
    service runs one gunicorn worker per core: workers x threads must not
    exceed the cores, and spinning OpenMP threads beside a second busy
    worker collapse throughput. Threads pay off for large offline batches.
    """
    if n_threads is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        if not raw:
            return 1
        try:
            n_threads = int(raw)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {raw!r}") from None
        source = THREADS_ENV
    else:
        source = "n_threads"
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)):
        raise TypeError(f"n_threads must be an integer, got {type(n_threads).__name__}")
    if n_threads < 1:
        raise ValueError(f"{source} must be >= 1, got {n_threads}")
    return int(n_threads)


def fresh_seed():
    """A new uint64 seed from the operating system's entropy.

    Read from ``os.urandom`` on every call rather than from a generator
    seeded once, so processes forked from one parent never share streams.
    """
    return int.from_bytes(os.urandom(8), "little")


def build_info():
    """What this build of the sampler can do, for ``/ready`` and bug reports."""
    return {
        "compiled": True,
        "openmp": HAVE_OPENMP,
        "threads": resolve_n_threads(),
        "chunk_size": CHUNK_SIZE,
    }


cdef inline bint _is_float64_vector(obj):
    return (cnp.PyArray_Check(obj) and cnp.PyArray_TYPE(<cnp.ndarray>obj) == cnp.NPY_FLOAT64
            and cnp.PyArray_NDIM(<cnp.ndarray>obj) == 1 and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>obj))


cdef cnp.ndarray _as_vector(obj, str name):
    # Already what the kernel reads: no numpy call at all (the service's case).
    if _is_float64_vector(obj):
        return <cnp.ndarray>obj
    try:
        arr = np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array of real numbers: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got {arr.ndim} dimensions")
    # After the check: ascontiguousarray would silently turn a scalar into shape (1,).
    return np.ascontiguousarray(arr)


cdef void _check_shapes(cnp.ndarray arr, str name) except *:
    cdef const double *p = <const double *>cnp.PyArray_DATA(arr)
    cdef Py_ssize_t i, n = cnp.PyArray_DIM(arr, 0)
    cdef double x
    for i in range(n):
        x = p[i]
        # Written so that NaN fails too: every comparison with NaN is false.
        if not (x > 0.0 and x < INFINITY):
            raise ValueError(
                f"{name}[{i}] = {x!r}: Beta parameters must be finite and > 0"
            )


cdef uint64_t _as_seed(seed) except? 0:
    if type(seed) is int and 0 <= seed <= 0xFFFFFFFFFFFFFFFF:
        return <uint64_t>seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    if not 0 <= seed <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"seed must be in [0, 2**64 - 1], got {seed}")
    return <uint64_t>int(seed)


def sample_beta(alpha, beta, *, seed=None, out=None, n_threads=None):
    """Draw one Beta(alpha[i], beta[i]) variate per element.

    Parameters
    ----------
    alpha, beta : array_like of float, one-dimensional, same length
        Shape parameters; every value must be finite and > 0. Other dtypes
        and non-contiguous arrays are converted to contiguous float64.
    seed : int in [0, 2**64), optional
        Makes the call reproducible: the same seed and inputs give the same
        output for any ``n_threads``. Without it, fresh OS entropy is used.
    out : ndarray of float64, optional
        Contiguous array of the same length to write into (may be ``alpha``
        or ``beta`` itself).
    n_threads : int, optional
        Threads for the parallel kernel; see :func:`resolve_n_threads`.

    Returns
    -------
    ndarray of float64
        Values in [0, 1]; never NaN.

    Raises
    ------
    ValueError
        A parameter that is <= 0, NaN or infinite (the message names the
        first one), arrays of different lengths or that are not
        one-dimensional, a seed out of range, or an unusable ``out``.

    Notes
    -----
    The algorithms are listed in the module docstring. The GIL is released
    for the whole kernel.
    """
    cdef cnp.ndarray a = _as_vector(alpha, "alpha")
    cdef cnp.ndarray b = _as_vector(beta, "beta")
    cdef Py_ssize_t n = cnp.PyArray_DIM(a, 0)
    if cnp.PyArray_DIM(b, 0) != n:
        raise ValueError(f"alpha and beta must have the same length, got {n} and {cnp.PyArray_DIM(b, 0)}")
    _check_shapes(a, "alpha")
    _check_shapes(b, "beta")
    cdef uint64_t c_seed = _as_seed(fresh_seed() if seed is None else seed)
    cdef int threads = n_threads if type(n_threads) is int and n_threads >= 1 else resolve_n_threads(n_threads)
    cdef cnp.ndarray result
    if out is None:
        result = cnp.PyArray_EMPTY(1, [n], cnp.NPY_FLOAT64, 0)
    else:
        if not (_is_float64_vector(out) and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)):
            raise ValueError("out must be a writeable, contiguous, one-dimensional float64 array")
        if out.shape[0] != n:
            raise ValueError(f"out has length {out.shape[0]}, expected {n}")
        result = out
    cdef const double *pa = <const double *>cnp.PyArray_DATA(a)
    cdef const double *pb = <const double *>cnp.PyArray_DATA(b)
    cdef double *po = <double *>cnp.PyArray_DATA(result)
    with nogil:
        fill_beta(pa, pb, po, n, c_seed, threads)
    return result
