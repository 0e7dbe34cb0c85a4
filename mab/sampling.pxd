# C-level kernels of mab.sampling, for other Cython modules to cimport.
#
# Every kernel is `noexcept nogil`: it cannot raise and never touches Python
# objects, so callers may run it inside `with nogil:` or a `prange` body.
# Validation happens once, in the Python-level wrappers, with the GIL held.

from libc.stdint cimport uint64_t


cdef struct Xoshiro256:
    uint64_t s[4]


# Seed the generator for one stream of a seed: (seed, stream) -> state.
# sample_beta uses stream c for chunk c; mab._ranking breaks ties on
# stream 2**64 - 1, so the scores never depend on the tie-breaking.
cdef void xoshiro_seed(Xoshiro256 *rng, uint64_t seed, uint64_t stream) noexcept nogil
cdef uint64_t xoshiro_next(Xoshiro256 *rng) noexcept nogil
# Uniform on the open interval (0, 1): never 0, so its log is always finite.
cdef double uniform_open(Xoshiro256 *rng) noexcept nogil
cdef double standard_normal(Xoshiro256 *rng) noexcept nogil
# Gamma(shape, 1) for shape >= 1, and log Gamma(shape, 1) for any shape > 0.
cdef double standard_gamma(Xoshiro256 *rng, double shape) noexcept nogil
cdef double log_standard_gamma(Xoshiro256 *rng, double shape) noexcept nogil
cdef double beta_variate(Xoshiro256 *rng, double a, double b) noexcept nogil

# Fill out[0:n] with Beta(alpha[i], beta[i]) variates. Element i always comes
# from the stream of chunk i // CHUNK_SIZE, so the result does not depend on
# n_threads. Inputs must already be validated (finite, > 0).
cdef void fill_beta(const double *alpha, const double *beta, double *out,
                    Py_ssize_t n, uint64_t seed, int n_threads) noexcept nogil
