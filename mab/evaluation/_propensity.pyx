"""Position propensities of Thompson-sampling rankings, by Monte Carlo, in C.

For one logged decision (its candidates' Beta parameters and the ranking it
returned), the propensity of position k is the probability that the item
logged at position k is ranked at position k when every candidate's score
is drawn from its Beta distribution and the candidates are sorted by score:
the marginal "item at position" probability of the item-position model
(L. Li, J. Y. Kim and I. Zitouni, "Toward predicting the outcome of an A/B
experiment for search relevance", WSDM 2015; the position-based IPS of
S. Li, Y. Abbasi-Yadkori, B. Kveton et al., "Offline evaluation of ranking
policies with click models", KDD 2018). It has no closed form for more than
a few candidates, so it is estimated by drawing rankings, with the Beta
variates of ``mab.sampling`` (its C kernel ``beta_variate``, the one
``sample_beta`` runs), all decisions of a batch in one ``nogil`` loop run
in parallel with OpenMP.

Per decision, with K positions:

* Logging policy: rankings are drawn until the logged item of every position
  has been seen at its position ``hits`` times (and at least ``min_draws``
  rankings were drawn), or ``max_draws`` were. For position k, if the c-th
  hit (c = ``hits``) came at draw N_k, then N_k / c is an unbiased estimate
  of 1 / p0_k: N_k is negative binomial, E[N_k] = c / p0_k (inverse binomial
  sampling: J. B. S. Haldane, "On a method of estimating frequencies",
  Biometrika 33(3), 1945; with c = 1 it is the geometric resampling of
  G. Neu and G. Bartok, "Importance weighting without importance weights",
  JMLR 17, 2016). Its relative standard error is sqrt((1 - p0_k) / c) at
  most 1 / sqrt(c), whatever p0_k, and its cost c / p0_k draws adapts to
  the propensity. A position that does not reach c hits within
  ``max_draws`` has a propensity below about c / max_draws: it is reported
  as not estimable (NaN).
* Candidate policy: as many rankings as the logging policy drew (M), from
  an independent stream; p1_k is the fraction of them with the logged item
  at position k. Given M it is unbiased, and independent of N_k, so
  p1_k * N_k / c is an unbiased estimate of the importance weight p1_k / p0_k.
* Overlap: the share of the candidate's (draw, position) slots filled with
  items out of the logging policy's reach (below).

Items out of reach. Gamma(a) concentrates (S. Boucheron, G. Lugosi and
P. Massart, "Concentration Inequalities", Oxford 2013, section 2.4:
sub-gamma on the right with variance factor a and scale 1, sub-Gaussian on
the left): P(G > a + sqrt(2aL) + L) <= e^-L and P(G < a - sqrt(2aL)) <=
e^-L. With X = G_a / (G_a + G_b), that bounds each Beta variate between lo
and hi except with probability 2e^-L. An item whose hi is below the K-th
largest lo of its decision lies below K other items, so outside the first
K positions and without influence on their order, except with probability
2(K + 1)e^-L per draw (4.5e-8 for K = 10 with the default L = 20): it is out of
the policy's reach, and left out of its draws.

Within a draw the remaining items are sampled by decreasing hi, and the
draw stops at the first item whose hi is below the K-th best score so far:
that item, and every later one, lies below K sampled scores, except with
probability 2e^-L per item. So a long candidate list costs about as many
Beta variates per draw as it has items that can still compete for the
first K positions, not its length.

Ties between scores (a probability-zero event except for degenerate
shapes) go to the lower candidate index here, where the service breaks them
uniformly at random.
"""

cimport numpy as cnp
from cython.parallel cimport prange, threadid
from libc.math cimport NAN, sqrt
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, qsort
from libc.string cimport memset

from mab.sampling cimport Xoshiro256, beta_variate, xoshiro_seed

import numpy as np

cnp.import_array()

#: Random streams of a decision's seed: the logging policy's and the
#: candidate's. The service samples on streams 0, 1, ... (one per chunk of
#: 2048 candidates) and breaks ties on 2**64 - 1, so these are apart from
#: both and an evaluation never repeats the draws that made the decision.
LOGGER_STREAM = 2**63
CANDIDATE_STREAM = 2**63 + 1
cdef uint64_t _LOGGER_STREAM = 0x8000000000000000ULL
cdef uint64_t _CANDIDATE_STREAM = 0x8000000000000001ULL


cdef struct Inputs:
    const int64_t *offsets
    const double *a0
    const double *b0
    const double *a1
    const double *b1
    const int32_t *ranked       # n x K, -1 past a decision's own top_k
    const uint64_t *seeds
    const cnp.npy_bool *same    # candidate == logger: nothing to draw
    Py_ssize_t K
    int64_t hits
    int64_t min_draws
    int64_t max_draws
    double prune_log
    # outputs
    double *inv_p0              # n x K
    double *p0
    double *p1
    double *unsupported         # n
    int64_t *draws              # n
    int32_t *competing          # n x 2
    double *sampled             # n x 2


cdef struct Ordered:
    double neg_hi
    int32_t j


cdef struct Scratch:
    double *lo
    double *hi
    double *ca                  # competing items' parameters, contiguous,
    double *cb                  # by decreasing upper bound
    double *chi
    Ordered *order
    int32_t *idx0               # the logger's competing items (decision-local)
    int32_t *idx1
    char *reach0                # decision-local index -> 1 if in the logger's reach
    double *kbuf
    double *top_v
    int32_t *top_i
    int64_t *hits0
    int64_t *reached_at
    int64_t *hits1


cdef inline void _bounds(double a, double b, double L, double *lo, double *hi) noexcept nogil:
    # Written as 1 / (1 + B / A) so that huge shapes cannot overflow A + B;
    # an overflow to inf in A or B only widens the interval.
    cdef double ra = sqrt(2.0 * a * L)
    cdef double rb = sqrt(2.0 * b * L)
    cdef double a_hi = a + ra + L
    cdef double b_lo = b - rb
    cdef double a_lo = a - ra
    cdef double b_hi = b + rb + L
    hi[0] = 1.0 if not b_lo > 0.0 else 1.0 / (1.0 + b_lo / a_hi)
    lo[0] = 0.0 if not a_lo > 0.0 else 1.0 / (1.0 + b_hi / a_lo)


cdef int _by_upper_bound(const void *x, const void *y) noexcept nogil:
    cdef double a = (<const Ordered *>x).neg_hi
    cdef double b = (<const Ordered *>y).neg_hi
    if a < b:
        return -1
    if a > b:
        return 1
    # Equal bounds: by index, so the order never depends on qsort.
    return (<const Ordered *>x).j - (<const Ordered *>y).j


cdef Py_ssize_t _competing(const double *a, const double *b, Py_ssize_t n, Py_ssize_t k,
                           double L, Scratch *s, int32_t *idx) noexcept nogil:
    # Items that can reach the first k positions (see the module docstring),
    # by decreasing upper bound: indices in idx, parameters and bounds in
    # s.ca, s.cb, s.chi. Returns how many.
    cdef Py_ssize_t j, p, m = 0
    cdef double x, lam
    for p in range(k):
        s.kbuf[p] = -1.0
    for j in range(n):
        _bounds(a[j], b[j], L, &s.lo[j], &s.hi[j])
        x = s.lo[j]
        if x > s.kbuf[k - 1]:
            p = k - 1
            while p > 0 and x > s.kbuf[p - 1]:
                s.kbuf[p] = s.kbuf[p - 1]
                p -= 1
            s.kbuf[p] = x
    lam = s.kbuf[k - 1]
    for j in range(n):
        if s.hi[j] >= lam:
            s.order[m].neg_hi = -s.hi[j]
            s.order[m].j = <int32_t>j
            m += 1
    qsort(s.order, m, sizeof(Ordered), _by_upper_bound)
    for p in range(m):
        j = s.order[p].j
        idx[p] = <int32_t>j
        s.ca[p] = a[j]
        s.cb[p] = b[j]
        s.chi[p] = s.hi[j]
    return m


cdef inline Py_ssize_t _draw_top(Xoshiro256 *rng, Scratch *s, Py_ssize_t m, Py_ssize_t k) noexcept nogil:
    # One ranking: the best k of the competing items, in order. Items come
    # by decreasing upper bound, so once the k-th best score so far is above
    # the next item's bound it is above every later item's (except with the
    # pruning bound's probability): the draw stops there, and most items of
    # a long list are never sampled. Returns how many were.
    cdef Py_ssize_t c, p, filled = 0
    cdef double x
    for c in range(m):
        if filled == k and s.chi[c] < s.top_v[k - 1]:
            return c
        x = beta_variate(rng, s.ca[c], s.cb[c])
        if filled < k:
            p = filled
            filled += 1
        elif x > s.top_v[k - 1]:
            p = k - 1
        else:
            continue
        while p > 0 and x > s.top_v[p - 1]:
            s.top_v[p] = s.top_v[p - 1]
            s.top_i[p] = s.top_i[p - 1]
            p -= 1
        s.top_v[p] = x
        s.top_i[p] = <int32_t>c
    return m


cdef void _decide(const Inputs *g, Scratch *s, Py_ssize_t d) noexcept nogil:
    cdef Py_ssize_t K = g.K
    cdef int64_t start = g.offsets[d]
    cdef Py_ssize_t n = <Py_ssize_t>(g.offsets[d + 1] - start)
    cdef const int32_t *ranked = g.ranked + d * K
    cdef Py_ssize_t kd = 0, p, c, m0, m1
    cdef int64_t draws = 0, reached = 0, unsupported = 0, sampled0 = 0, sampled1 = 0, t
    cdef int32_t j
    cdef Xoshiro256 rng
    while kd < K and ranked[kd] >= 0:
        kd += 1
    for p in range(K):
        g.inv_p0[d * K + p] = NAN
        g.p0[d * K + p] = NAN
        g.p1[d * K + p] = NAN
    g.unsupported[d] = 0.0
    g.draws[d] = 0
    g.competing[2 * d] = 0
    g.competing[2 * d + 1] = 0
    g.sampled[2 * d] = 0.0
    g.sampled[2 * d + 1] = 0.0
    if kd == 0 or g.same[d]:
        return

    # The logging policy, until every position has its hits.
    m0 = _competing(g.a0 + start, g.b0 + start, n, kd, g.prune_log, s, s.idx0)
    for p in range(kd):
        s.hits0[p] = 0
        s.reached_at[p] = 0
        s.hits1[p] = 0
    for c in range(m0):
        s.reach0[s.idx0[c]] = 1
    for p in range(kd):
        # A logged item out of the logging policy's reach can never be seen
        # at its position: do not wait for it.
        if not s.reach0[ranked[p]]:
            reached += 1
    xoshiro_seed(&rng, g.seeds[d], _LOGGER_STREAM)
    while True:
        sampled0 += _draw_top(&rng, s, m0, kd)
        draws += 1
        for p in range(kd):
            if s.idx0[s.top_i[p]] == ranked[p]:
                s.hits0[p] += 1
                if s.hits0[p] == g.hits:
                    s.reached_at[p] = draws
                    reached += 1
        if (draws >= g.min_draws and reached == kd) or draws >= g.max_draws:
            break

    # The candidate, on as many draws from its own stream.
    m1 = _competing(g.a1 + start, g.b1 + start, n, kd, g.prune_log, s, s.idx1)
    xoshiro_seed(&rng, g.seeds[d], _CANDIDATE_STREAM)
    for t in range(draws):
        sampled1 += _draw_top(&rng, s, m1, kd)
        for p in range(kd):
            j = s.idx1[s.top_i[p]]
            if j == ranked[p]:
                s.hits1[p] += 1
            if not s.reach0[j]:
                unsupported += 1
    for c in range(m0):
        s.reach0[s.idx0[c]] = 0

    for p in range(kd):
        if s.reached_at[p] > 0:
            g.inv_p0[d * K + p] = <double>s.reached_at[p] / <double>g.hits
        g.p0[d * K + p] = <double>s.hits0[p] / <double>draws
        g.p1[d * K + p] = <double>s.hits1[p] / <double>draws
    g.unsupported[d] = <double>unsupported / (<double>draws * <double>kd)
    g.draws[d] = draws
    g.competing[2 * d] = <int32_t>m0
    g.competing[2 * d + 1] = <int32_t>m1
    g.sampled[2 * d] = <double>sampled0 / <double>draws
    g.sampled[2 * d + 1] = <double>sampled1 / <double>draws


cdef int _alloc(Scratch *s, Py_ssize_t n_max, Py_ssize_t K) noexcept nogil:
    cdef Py_ssize_t j
    s.lo = <double *>malloc(n_max * sizeof(double))
    s.hi = <double *>malloc(n_max * sizeof(double))
    s.ca = <double *>malloc(n_max * sizeof(double))
    s.cb = <double *>malloc(n_max * sizeof(double))
    s.chi = <double *>malloc(n_max * sizeof(double))
    s.order = <Ordered *>malloc(n_max * sizeof(Ordered))
    s.idx0 = <int32_t *>malloc(n_max * sizeof(int32_t))
    s.idx1 = <int32_t *>malloc(n_max * sizeof(int32_t))
    s.reach0 = <char *>calloc(n_max, sizeof(char))
    s.kbuf = <double *>malloc(K * sizeof(double))
    s.top_v = <double *>malloc(K * sizeof(double))
    s.top_i = <int32_t *>malloc(K * sizeof(int32_t))
    s.hits0 = <int64_t *>malloc(K * sizeof(int64_t))
    s.reached_at = <int64_t *>malloc(K * sizeof(int64_t))
    s.hits1 = <int64_t *>malloc(K * sizeof(int64_t))
    if (s.lo == NULL or s.hi == NULL or s.ca == NULL or s.cb == NULL or s.chi == NULL or s.order == NULL
            or s.idx0 == NULL or s.idx1 == NULL or s.reach0 == NULL
            or s.kbuf == NULL or s.top_v == NULL or s.top_i == NULL or s.hits0 == NULL
            or s.reached_at == NULL or s.hits1 == NULL):
        return -1
    return 0


cdef void _release(Scratch *s) noexcept nogil:
    free(s.lo)
    free(s.hi)
    free(s.ca)
    free(s.cb)
    free(s.chi)
    free(s.order)
    free(s.idx0)
    free(s.idx1)
    free(s.reach0)
    free(s.kbuf)
    free(s.top_v)
    free(s.top_i)
    free(s.hits0)
    free(s.reached_at)
    free(s.hits1)


def _vector(obj, dtype, name, length=None):
    arr = np.ascontiguousarray(obj, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got {arr.ndim} dimensions")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {length}")
    return arr


def position_propensities(offsets, alpha0, beta0, alpha1, beta1, ranked, seeds, same, *,
                          hits, min_draws, max_draws, prune_log=20.0, n_threads=1):
    """Estimate, per decision and position, the logging policy's inverse
    propensity and the candidate's propensity of the logged ranking.

    Parameters
    ----------
    offsets : int64 array, shape (n + 1,)
        Decision d's candidates are ``[offsets[d], offsets[d + 1])`` of the
        flat arrays; non-decreasing, ``offsets[0] == 0``, at least one each.
    alpha0, beta0 : float64 arrays, shape (offsets[n],)
        The logging policy's Beta parameters (finite, > 0).
    alpha1, beta1 : float64 arrays, shape (offsets[n],)
        The candidate's.
    ranked : int32 array, shape (n, K)
        The logged order as decision-local candidate indices, best first;
        -1 after a decision's last position. Indices are distinct and
        within the decision.
    seeds : uint64 array, shape (n,)
        Each decision's seed; its streams ``LOGGER_STREAM`` and
        ``CANDIDATE_STREAM`` are used, so results do not depend on the
        batch or the thread count.
    same : bool array, shape (n,)
        True where the candidate's parameters equal the logger's: nothing is
        drawn and every output is NaN (0 unsupported, 0 draws).
    hits : int >= 1
        Hits per position for the inverse estimate (relative standard error
        at most 1 / sqrt(hits)).
    min_draws, max_draws : int, 1 <= min_draws <= max_draws
        Fewest and most rankings drawn from the logging policy.
    prune_log : float > 0
        L of the pruning bounds (a pruned item would have entered the first
        K positions with probability at most 2(K + 1) e^-L per draw).
    n_threads : int >= 1

    Returns
    -------
    dict of ndarrays
        ``inv_p0`` (n, K) float64: N_k / hits, unbiased for 1 / p0; NaN past
        the decision's positions or where ``max_draws`` did not reach
        ``hits`` hits. ``p0`` (n, K): the logger's plug-in propensity (hits
        / draws), for reports. ``p1`` (n, K): the candidate's propensity.
        ``unsupported`` (n,): the candidate's share of (draw, position)
        slots filled with items out of the logging policy's reach.
        ``draws`` (n,) int64: rankings drawn per policy. ``competing``
        (n, 2) int32: candidates within reach, logging policy and
        candidate. ``sampled`` (n, 2) float64: Beta variates per draw.

    Raises
    ------
    ValueError
        Inconsistent shapes, out-of-range settings or ranked indices, or a
        parameter that is not finite and > 0.
    MemoryError
        No memory for the per-thread scratch space.
    """
    offsets = _vector(offsets, np.int64, "offsets")
    n = offsets.shape[0] - 1
    if n < 0:
        raise ValueError("offsets must hold at least one element")
    lengths = np.diff(offsets)
    if offsets[0] != 0 or (n and lengths.min() < 1):
        raise ValueError("offsets must start at 0 and give every decision at least one candidate")
    total = int(offsets[n])
    a0 = _vector(alpha0, np.float64, "alpha0", total)
    b0 = _vector(beta0, np.float64, "beta0", total)
    a1 = _vector(alpha1, np.float64, "alpha1", total)
    b1 = _vector(beta1, np.float64, "beta1", total)
    for name, arr in (("alpha0", a0), ("beta0", b0), ("alpha1", a1), ("beta1", b1)):
        if total and not (np.all(arr > 0.0) and np.all(np.isfinite(arr))):
            raise ValueError(f"{name}: Beta parameters must be finite and > 0")
    rk = np.ascontiguousarray(ranked, dtype=np.int32)
    if rk.ndim != 2 or rk.shape[0] != n:
        raise ValueError(f"ranked must have shape (n, K) with n = {n}, got {rk.shape}")
    K = rk.shape[1]
    sd = _vector(seeds, np.uint64, "seeds", n)
    sm = _vector(same, np.bool_, "same", n)
    if isinstance(hits, bool) or int(hits) < 1:
        raise ValueError(f"hits must be >= 1, got {hits}")
    if not 1 <= int(min_draws) <= int(max_draws):
        raise ValueError(f"need 1 <= min_draws <= max_draws, got {min_draws} and {max_draws}")
    if not prune_log > 0:
        raise ValueError(f"prune_log must be > 0, got {prune_log}")
    if int(n_threads) < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    if n and K:
        valid = rk >= 0
        # Positions are a prefix: no valid index after a -1.
        if np.any(valid[:, 1:] & ~valid[:, :-1]):
            raise ValueError("ranked: a decision's positions must come first, -1 only after them")
        if np.any(rk < -1) or np.any(np.where(valid, rk, -1) >= lengths[:, None]):
            raise ValueError("ranked: an index is outside its decision's candidates")
        ordered = np.sort(rk, axis=1)
        if np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)):
            raise ValueError("ranked: a decision ranks the same candidate twice")

    inv_p0 = np.empty((n, K), np.float64)
    p0 = np.empty((n, K), np.float64)
    p1 = np.empty((n, K), np.float64)
    unsupported = np.empty(n, np.float64)
    draws = np.empty(n, np.int64)
    competing = np.empty((n, 2), np.int32)
    sampled = np.empty((n, 2), np.float64)
    result = dict(inv_p0=inv_p0, p0=p0, p1=p1, unsupported=unsupported, draws=draws, competing=competing,
                  sampled=sampled)
    if n == 0 or K == 0:
        inv_p0[:] = p0[:] = p1[:] = np.nan
        unsupported[:] = 0.0
        draws[:] = 0
        competing[:] = 0
        sampled[:] = 0.0
        return result

    cdef Inputs g
    cdef cnp.ndarray c_offsets = offsets, c_a0 = a0, c_b0 = b0, c_a1 = a1, c_b1 = b1
    cdef cnp.ndarray c_rk = rk, c_sd = sd, c_sm = sm
    cdef cnp.ndarray c_inv = inv_p0, c_p0 = p0, c_p1 = p1, c_un = unsupported, c_dr = draws, c_co = competing
    cdef cnp.ndarray c_sa = sampled
    g.offsets = <const int64_t *>cnp.PyArray_DATA(c_offsets)
    g.a0 = <const double *>cnp.PyArray_DATA(c_a0)
    g.b0 = <const double *>cnp.PyArray_DATA(c_b0)
    g.a1 = <const double *>cnp.PyArray_DATA(c_a1)
    g.b1 = <const double *>cnp.PyArray_DATA(c_b1)
    g.ranked = <const int32_t *>cnp.PyArray_DATA(c_rk)
    g.seeds = <const uint64_t *>cnp.PyArray_DATA(c_sd)
    g.same = <const cnp.npy_bool *>cnp.PyArray_DATA(c_sm)
    g.K = K
    g.hits = int(hits)
    g.min_draws = int(min_draws)
    g.max_draws = int(max_draws)
    g.prune_log = float(prune_log)
    g.inv_p0 = <double *>cnp.PyArray_DATA(c_inv)
    g.p0 = <double *>cnp.PyArray_DATA(c_p0)
    g.p1 = <double *>cnp.PyArray_DATA(c_p1)
    g.unsupported = <double *>cnp.PyArray_DATA(c_un)
    g.draws = <int64_t *>cnp.PyArray_DATA(c_dr)
    g.competing = <int32_t *>cnp.PyArray_DATA(c_co)
    g.sampled = <double *>cnp.PyArray_DATA(c_sa)

    cdef Py_ssize_t n_max = int(lengths.max())
    cdef Py_ssize_t d, t, nd = n
    cdef int threads = min(int(n_threads), n)
    cdef Scratch *scratch = <Scratch *>malloc(threads * sizeof(Scratch))
    if scratch == NULL:
        raise MemoryError("no memory for the propensity scratch space")
    memset(scratch, 0, threads * sizeof(Scratch))
    cdef int failed = 0
    for t in range(threads):
        if _alloc(&scratch[t], n_max, K) != 0:
            failed = 1
    try:
        if failed:
            raise MemoryError("no memory for the propensity scratch space")
        with nogil:
            if threads == 1:
                for d in range(nd):
                    _decide(&g, &scratch[0], d)
            else:
                # Decisions differ in cost (the draws adapt to the
                # propensities): small dynamic chunks keep the threads even.
                for d in prange(nd, num_threads=threads, schedule="dynamic", chunksize=8):
                    _decide(&g, &scratch[threadid()], d)
    finally:
        for t in range(threads):
            _release(&scratch[t])
        free(scratch)
    return result
