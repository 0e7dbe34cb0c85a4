# Atomic loads and stores (GCC's __atomic builtins) on the words of files
# that several processes map, and the layout constants those files share
# (mab/feedback/_overlay.pyx, _window.pyx).

from libc.stdint cimport uint64_t

cdef extern from *:
    """
    static inline uint64_t mab_load_acquire(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline uint64_t mab_load_relaxed(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void mab_store_release(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline void mab_store_relaxed(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    static inline void mab_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
    static inline void mab_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    static inline void mab_or_release(uint64_t *p, uint64_t v) { __atomic_fetch_or(p, v, __ATOMIC_RELEASE); }
    static inline double mab_load_double(const uint64_t *p) {
        uint64_t w = __atomic_load_n(p, __ATOMIC_RELAXED); double d; __builtin_memcpy(&d, &w, 8); return d;
    }
    static inline void mab_store_double(uint64_t *p, double d) {
        uint64_t w; __builtin_memcpy(&w, &d, 8); __atomic_store_n(p, w, __ATOMIC_RELAXED);
    }
    """
    uint64_t load_acquire "mab_load_acquire"(const uint64_t *p) noexcept nogil
    uint64_t load_relaxed "mab_load_relaxed"(const uint64_t *p) noexcept nogil
    void store_release "mab_store_release"(uint64_t *p, uint64_t v) noexcept nogil
    void store_relaxed "mab_store_relaxed"(uint64_t *p, uint64_t v) noexcept nogil
    void fence_acquire "mab_fence_acquire"() noexcept nogil
    void fence_release "mab_fence_release"() noexcept nogil
    void or_release "mab_or_release"(uint64_t *p, uint64_t v) noexcept nogil
    double load_double "mab_load_double"(const uint64_t *p) noexcept nogil
    void store_double "mab_store_double"(uint64_t *p, double d) noexcept nogil

# Every file starts with a header of one page; increment VERSION when a
# layout changes (the files are rebuilt from the journal, never migrated).
cdef enum:
    HEADER = 4096
    VERSION = 1
