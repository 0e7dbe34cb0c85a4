# The hash of entity ids' bytes, shared by the embedded store's index
# (_table.pyx, where it is part of the on-disk format: see HASH_VERSION there)
# and the Vertex stores' cache (_cache.pyx).

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

cdef inline uint64_t _rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef inline uint64_t _fmix64(uint64_t h) noexcept nogil:
    # MurmurHash3's finaliser: every input bit affects every output bit.
    h ^= h >> 33
    h *= 0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= 0xC4CEB9FE1A85EC53ULL
    h ^= h >> 33
    return h


cdef inline uint64_t hash_bytes(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """A word-at-a-time hash in the style of MurmurHash3's 64-bit mixing."""
    # Two odd 64-bit constants: the golden ratio's and MurmurHash3's.
    cdef uint64_t k1 = 0x9E3779B97F4A7C15ULL, k2 = 0xC2B2AE3D27D4EB4FULL
    cdef uint64_t h = k1 ^ (<uint64_t>n * k2)
    cdef uint64_t w
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        h = _rotl(h ^ (w * k2), 31) * k1
        i += 8
    if i < n:
        w = 0
        memcpy(&w, p + i, n - i)
        h = _rotl(h ^ (w * k2), 31) * k1
    return _fmix64(h)
