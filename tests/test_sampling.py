import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import mab
from mab import sampling
from mab.sampling import sample_beta
from tests.beta_checks import SIGNIFICANCE, Z, beta_moment_errors, ks_pvalue_beta

N = 200_000

# Every regime the sampler has a separate code path or numerical hazard for.
REGIMES = [
    pytest.param(1e-3, 1e-3, id="both-tiny"),
    pytest.param(1e-3, 5.0, id="tiny-alpha"),
    pytest.param(4.0, 1e-3, id="tiny-beta"),
    pytest.param(0.5, 0.5, id="both-below-1"),
    pytest.param(0.3, 2.0, id="alpha-below-1"),
    pytest.param(50.0, 0.3, id="beta-below-1"),
    pytest.param(1.0, 1.0, id="uniform"),
    pytest.param(0.999, 1.001, id="near-1"),
    pytest.param(2.0, 3.0, id="small"),
    pytest.param(1.0, 1e7, id="very-unequal"),
    pytest.param(1e7, 1.0, id="very-unequal-mirrored"),
    pytest.param(1e6, 1e6, id="both-large"),
    pytest.param(1e6, 3.0, id="large-and-small"),
    pytest.param(120.0, 40_000.0, id="typical-bandit"),
]


def draw(a, b, seed, n=N, **kwargs):
    return sample_beta(np.full(n, a), np.full(n, b), seed=seed, **kwargs)


# -- distribution ------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), REGIMES)
def test_kolmogorov_smirnov(a, b):
    sample = draw(a, b, seed=1234)
    assert ks_pvalue_beta(sample, a, b) > SIGNIFICANCE


@pytest.mark.parametrize(("a", "b"), REGIMES)
def test_mean_and_variance(a, b):
    z_mean, z_var = beta_moment_errors(draw(a, b, seed=4321), a, b)
    assert abs(z_mean) < Z, z_mean
    assert abs(z_var) < Z, z_var


def test_mixed_parameters_in_one_call():
    # Each element gets its own shapes: interleave two very different regimes.
    a = np.tile([0.2, 300.0], N // 2)
    b = np.tile([0.7, 5.0], N // 2)
    sample = sample_beta(a, b, seed=99, n_threads=2)
    assert ks_pvalue_beta(sample[0::2], 0.2, 0.7) > SIGNIFICANCE
    assert ks_pvalue_beta(sample[1::2], 300.0, 5.0) > SIGNIFICANCE


def test_normal_kernel_through_large_shapes():
    # For shape 1e12 the gamma is d * (1 + Z / sqrt(9d))**3 with Z nearly
    # always accepted, so X / (X + Y) is Normal(0.5, 1/(8 * 1e12)) to high
    # accuracy: a direct check of the ziggurat's tails at this sample size.
    from scipy import stats

    shape = 1e12
    sample = draw(shape, shape, seed=5)
    standardized = (sample - 0.5) / np.sqrt(1.0 / (8.0 * shape))
    assert stats.kstest(standardized, "norm").pvalue > SIGNIFICANCE


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=5e-324, max_value=1.7e308, allow_nan=False, allow_infinity=False),
            st.floats(min_value=5e-324, max_value=1.7e308, allow_nan=False, allow_infinity=False),
        ),
        min_size=1,
        max_size=64,
    ),
    st.integers(min_value=0, max_value=2**64 - 1),
)
def test_any_finite_positive_shapes_give_values_in_unit_interval(pairs, seed):
    a, b = np.array(pairs).T
    out = sample_beta(a, b, seed=seed)
    assert not np.isnan(out).any()
    assert not np.signbit(out).any()
    assert ((out >= 0.0) & (out <= 1.0)).all()


# Shapes so small that log(U) / shape overflows to -inf in one or both
# gamma variates (below about 1e-308), and their neighbours. Beta(a, b)
# is then 0 or 1 except with probability below 1e-290, and 1 with
# probability a / (a + b): X > Y is P(E1 / a < E2 / b) for exponentials.
TINY = [
    pytest.param(5e-324, 5e-324, id="both-smallest-subnormal"),
    pytest.param(5e-324, 1e-323, id="subnormals-1-to-2"),
    pytest.param(1e-310, 3e-310, id="subnormals-1-to-3"),
    pytest.param(2e-308, 2e-308, id="smallest-normals"),
    pytest.param(1e-300, 3e-300, id="no-overflow"),
    pytest.param(5e-324, 1e-300, id="subnormal-and-normal"),
    pytest.param(1e-300, 1e-310, id="normal-and-subnormal"),
]


@pytest.mark.parametrize(("a", "b"), TINY)
def test_probability_of_one_at_tiny_shapes(a, b):
    # The subnormal case used to give P(1) = 0.25 for a = b = 5e-324: the
    # coin was U * (a + b) < a, which rounds in the subnormals.
    sample = draw(a, b, seed=77)
    ones = int(np.count_nonzero(sample == 1.0))
    assert np.count_nonzero(sample == 0.0) + ones == N, "every value is 0 or 1"
    p = a / (a + b)
    if p < 1.0 / N**2:
        assert ones == 0      # the binomial test has no power here; P(any) < 1 / N
    elif p > 1.0 - 1.0 / N**2:
        assert ones == N
    else:
        assert stats.binomtest(ones, N, p).pvalue > SIGNIFICANCE, (ones / N, p)


def test_probability_of_one_check_rejects_the_subnormal_bias():
    # What the old coin gave at a = b = 5e-324, at the same sample size.
    rng = np.random.default_rng(77)
    ones = int(np.count_nonzero(rng.uniform(size=N) * 1e-323 < 5e-324))
    assert stats.binomtest(ones, N, 0.5).pvalue < SIGNIFICANCE


EXTREME_SHAPES = [5e-324, 1e-310, 2.3e-308, 1e-300, 1e-3, 0.5, 1.0, 2.0, 1e6, 1e300, 1e305, np.finfo(float).max]


def test_extreme_shapes_never_give_nan_or_negative_zero():
    # Every pair of extreme shapes: values in [0, 1], no NaN, no -0.0 (which
    # rank would tie with 0.0 anyway, but the contract says [0, 1]).
    a, b = np.array(list(itertools.product(EXTREME_SHAPES, repeat=2))).T
    a, b = np.repeat(a, 2000), np.repeat(b, 2000)
    for threads in (1, 2):
        out = sample_beta(a, b, seed=13, n_threads=threads)
        assert not np.isnan(out).any()
        assert not np.signbit(out).any()
        assert ((out >= 0.0) & (out <= 1.0)).all()


# -- streams and threads -----------------------------------------------------


def mixed_inputs(n=100_003):
    # Odd length: the last chunk is partial; all code paths are present.
    rng = np.random.default_rng(0)
    a = np.exp(rng.uniform(np.log(1e-3), np.log(1e6), n))
    b = np.exp(rng.uniform(np.log(1e-3), np.log(1e7), n))
    return a, b


def test_seed_reproduces():
    a, b = mixed_inputs()
    np.testing.assert_array_equal(sample_beta(a, b, seed=7), sample_beta(a, b, seed=7))


@pytest.mark.parametrize("threads", [2, 8])
def test_output_does_not_depend_on_thread_count(threads):
    a, b = mixed_inputs()
    expected = sample_beta(a, b, seed=2**64 - 1, n_threads=1)
    np.testing.assert_array_equal(sample_beta(a, b, seed=2**64 - 1, n_threads=threads), expected)


def test_thread_count_from_environment_does_not_change_output(monkeypatch):
    a, b = mixed_inputs()
    expected = sample_beta(a, b, seed=11)
    monkeypatch.setenv(sampling.THREADS_ENV, "2")
    np.testing.assert_array_equal(sample_beta(a, b, seed=11), expected)


def test_different_seeds_differ():
    a, b = mixed_inputs(1000)
    assert not np.array_equal(sample_beta(a, b, seed=1), sample_beta(a, b, seed=2))


def test_no_seed_gives_fresh_streams():
    a, b = mixed_inputs(1000)
    assert not np.array_equal(sample_beta(a, b), sample_beta(a, b))


def test_chunks_have_independent_streams():
    # Equal parameters in every chunk must not produce repeated chunks.
    size = sampling.CHUNK_SIZE
    out = draw(2.0, 5.0, seed=3, n=4 * size)
    chunks = out.reshape(4, size)
    assert len({chunk.tobytes() for chunk in chunks}) == 4
    assert abs(np.corrcoef(chunks[0], chunks[1])[0, 1]) < Z / np.sqrt(size)


def test_seed_prefix_is_stable_across_lengths():
    # Element i depends only on (seed, i's chunk, shapes): a longer call with
    # the same seed extends a shorter one.
    a, b = mixed_inputs(5000)
    np.testing.assert_array_equal(sample_beta(a[:3000], b[:3000], seed=8), sample_beta(a, b, seed=8)[:3000])


# -- input handling ----------------------------------------------------------


@pytest.mark.parametrize(
    ("alpha", "beta", "message"),
    [
        ([1.0, 0.0], [1.0, 1.0], r"alpha\[1\] = 0\.0"),
        ([1.0, 1.0], [1.0, -2.0], r"beta\[1\] = -2\.0"),
        ([np.nan], [1.0], r"alpha\[0\] = nan"),
        ([1.0], [np.inf], r"beta\[0\] = inf"),
        ([-np.inf], [1.0], r"alpha\[0\] = -inf"),
        ([1.0, 2.0], [1.0], "same length"),
        ([[1.0]], [[1.0]], "one-dimensional"),
        (1.0, 1.0, "one-dimensional"),
        (["x"], [1.0], "real numbers"),
    ],
)
def test_bad_input_raises_value_error(alpha, beta, message):
    with pytest.raises(ValueError, match=message):
        sample_beta(alpha, beta)


def test_empty_input_returns_empty_array():
    out = sample_beta([], [])
    assert out.shape == (0,) and out.dtype == np.float64


def test_other_dtypes_and_strides_are_converted():
    a, b = mixed_inputs(4000)
    expected = sample_beta(a[::2], b[::2], seed=5)
    np.testing.assert_array_equal(sample_beta(np.ascontiguousarray(a[::2]), b[::2].copy(), seed=5), expected)
    ints = sample_beta(np.arange(1, 101), np.arange(1, 101, dtype=np.int32), seed=5)
    np.testing.assert_array_equal(ints, sample_beta(np.arange(1.0, 101.0), np.arange(1.0, 101.0), seed=5))
    floats32 = sample_beta(np.full(10, 2, np.float32), [3] * 10, seed=5)
    np.testing.assert_array_equal(floats32, draw(2.0, 3.0, seed=5, n=10))


def test_out_parameter():
    a, b = mixed_inputs(100)
    out = np.empty(100)
    result = sample_beta(a, b, seed=4, out=out)
    assert result is out
    np.testing.assert_array_equal(out, sample_beta(a, b, seed=4))
    in_place = a.copy()
    sample_beta(in_place, b, seed=4, out=in_place)
    np.testing.assert_array_equal(in_place, out)
    with pytest.raises(ValueError, match="length"):
        sample_beta(a, b, out=np.empty(99))
    with pytest.raises(ValueError, match="float64"):
        sample_beta(a, b, out=np.empty(100, dtype=np.float32))


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seed_out_of_range(seed):
    with pytest.raises(ValueError, match="seed"):
        sample_beta([1.0], [1.0], seed=seed)


@pytest.mark.parametrize("seed", [1.5, "1", True])
def test_seed_of_wrong_type(seed):
    with pytest.raises(TypeError, match="seed"):
        sample_beta([1.0], [1.0], seed=seed)


def test_numpy_integer_seed_is_accepted():
    np.testing.assert_array_equal(
        sample_beta([2.0], [2.0], seed=np.uint64(2**64 - 1)), sample_beta([2.0], [2.0], seed=2**64 - 1)
    )


# -- thread count and build --------------------------------------------------


def test_thread_count_resolution(monkeypatch):
    monkeypatch.delenv(sampling.THREADS_ENV, raising=False)
    assert sampling.resolve_n_threads() == 1
    monkeypatch.setenv(sampling.THREADS_ENV, "3")
    assert sampling.resolve_n_threads() == 3
    assert sampling.resolve_n_threads(2) == 2
    monkeypatch.setenv(sampling.THREADS_ENV, "lots")
    with pytest.raises(ValueError, match=sampling.THREADS_ENV):
        sampling.resolve_n_threads()
    monkeypatch.setenv(sampling.THREADS_ENV, "0")
    with pytest.raises(ValueError, match=sampling.THREADS_ENV):
        sampling.resolve_n_threads()
    with pytest.raises(ValueError, match="n_threads"):
        sampling.resolve_n_threads(0)
    with pytest.raises(TypeError):
        sampling.resolve_n_threads(1.5)


@pytest.mark.skipif(
    os.environ.get("MAB_ALLOW_NO_OPENMP") == "1",
    reason="MAB_ALLOW_NO_OPENMP=1: a serial build was asked for",
)
def test_build_has_openmp():
    assert sampling.HAVE_OPENMP
    assert sampling.build_info()["openmp"] is True


def test_idle_openmp_threads_sleep_by_default():
    # Set by mab/__init__ before the extension loads libgomp, unless the user chose.
    if "OMP_WAIT_POLICY" not in os.environ:
        pytest.fail("mab did not set OMP_WAIT_POLICY")
    code = "import os, mab.sampling; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    assert mab.__version__


# -- fork safety ---------------------------------------------------------------

FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from mab.sampling import sample_beta

    a, b = np.full(50_000, 2.0), np.full(50_000, 3.0)
    sample_beta(a, b)                      # the parent samples first, as a master might
    children = []
    for _ in range(2):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            out = sample_beta(a, b, n_threads=2)   # a parallel region in the child
            os.write(write_end, out.tobytes())
            os._exit(0)
        os.close(write_end)
        children.append((pid, read_end))
    results = []
    for pid, read_end in children:
        with os.fdopen(read_end, "rb") as f:
            results.append(f.read())
        assert os.waitpid(pid, 0)[1] == 0
    assert all(len(r) == 8 * 50_000 for r in results)
    print("differ" if results[0] != results[1] else "same")
    """
)


def test_forked_children_sample_and_get_different_streams():
    out = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "differ"
