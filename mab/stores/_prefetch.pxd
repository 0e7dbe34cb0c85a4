# A hint to the CPU to start loading a cache line now (GCC's and Clang's
# __builtin_prefetch), shared by the lookups of the embedded store's index
# (_table.pyx) and of the Vertex stores' cache (_cache.pyx): a request's ids
# land in random places of tables larger than the CPU's caches, so their
# misses must overlap rather than queue.

cdef extern from *:
    """
    #define MAB_PREFETCH(p) __builtin_prefetch((const void *)(p))
    """
    void prefetch "MAB_PREFETCH"(const void *p) noexcept nogil
