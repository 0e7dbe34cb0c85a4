"""Build the compiled parts of ``mab``.

Metadata and dependencies live in ``pyproject.toml``; this file only
describes the Cython extensions and how they are compiled.

OpenMP follows scikit-learn's practice (``sklearn/_build_utils/openmp_helpers.py``):
the compiler is probed by compiling *and running* a tiny OpenMP program. If
the probe passes, ``-fopenmp`` is added to the compile and link flags of the
extensions that use ``prange``; if it fails, a serial build is made and a
warning is printed, unless ``MAB_REQUIRE_OPENMP=1`` is set, in which case the
build stops (CI sets it, so CI proves the parallel build).
"""

import os
import subprocess
import sys
import tempfile
import textwrap
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools._distutils.ccompiler import new_compiler
from setuptools._distutils.sysconfig import customize_compiler

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel num_threads(2)
        {
            #pragma omp atomic
            n += 1;
        }
        printf("threads=%d\\n", n);
        return n == 2 ? 0 : 1;
    }
    """
)

# -O3 lets gcc unroll and vectorise the sampler's inner loops;
# -fno-math-errno lets it inline sqrt and drop errno stores (we never read errno).
# -ffast-math is deliberately absent: the kernels rely on IEEE inf/NaN semantics.
EXTRA_COMPILE_ARGS = ["-O3", "-fno-math-errno"]


def openmp_flags():
    """Return the compiler flag list that enables OpenMP, or [] when it is unavailable."""
    if sys.platform == "win32":
        flags = ["/openmp"]
    else:
        flags = ["-fopenmp"]
    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe_openmp.c")
        with open(source, "w") as f:
            f.write(OPENMP_PROBE)
        try:
            objects = compiler.compile([source], output_dir=tmp, extra_postargs=flags)
            exe = os.path.join(tmp, "probe_openmp")
            compiler.link_executable(objects, exe, extra_postargs=flags)
            output = subprocess.run([exe], capture_output=True, text=True, timeout=60)
        except Exception as exc:  # a compile, link or run failure all mean "no OpenMP"
            return None, f"{type(exc).__name__}: {exc}"
        if output.returncode != 0 or "threads=2" not in output.stdout:
            return None, f"probe printed {output.stdout!r} and exited {output.returncode}"
    return flags, None


def require_openmp():
    return os.environ.get("MAB_REQUIRE_OPENMP", "").strip().lower() in {"1", "true", "yes"}


def build_extensions():
    flags, why_not = openmp_flags()
    if flags is None:
        message = (
            "mab: the C compiler does not support OpenMP "
            f"({why_not}); building a serial sampler. Install an OpenMP-capable "
            "compiler (gcc, or clang with libomp) for the parallel build."
        )
        if require_openmp():
            sys.exit(message + " MAB_REQUIRE_OPENMP is set, so the build stops here.")
        warnings.warn(message, stacklevel=1)
        flags = []
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]

    def extension(name, openmp=()):
        return Extension(
            name,
            [name.replace(".", "/") + ".pyx"],
            include_dirs=[np.get_include()],
            define_macros=macros,
            extra_compile_args=EXTRA_COMPILE_ARGS + list(openmp),
            extra_link_args=list(openmp),
        )

    # Only the sampler and the offline propensities run OpenMP regions.
    extensions = [
        extension("mab.sampling", openmp=flags),
        extension("mab._lists"),
        extension("mab._ranking"),
        extension("mab._wire"),
        extension("mab.stores._csv"),
        extension("mab.stores._table"),
        extension("mab.stores._cache"),
        extension("mab.stores._vertex._answers"),
        extension("mab.feedback._overlay"),
        extension("mab.feedback._window"),
        # Position propensities for offline evaluation: decisions in parallel.
        extension("mab.evaluation._propensity", openmp=flags),
    ]
    return cythonize(
        extensions,
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=build_extensions())
