#!/usr/bin/env python3
"""Coverage-guided fuzzing of mab's parsers with atheris (libFuzzer).

    .venv/bin/pip install -e '.[fuzz]'
    .venv/bin/python scripts/fuzz.py --target wire --seconds 900
    .venv/bin/python scripts/fuzz.py --target wire --seconds 900 --sanitize
    .venv/bin/python scripts/fuzz.py --target mab.testing.fuzz_http:fuzz_one_input --seconds 60

A target is a function of one ``bytes`` argument that returns for a good
outcome and raises for a finding. Named targets:

- ``wire``: ``mab.testing.fuzz_wire:fuzz_one_input``, the /predict body
  parsers (``mab._wire`` against orjson and a reference reading).
- ``worker``: ``mab.testing.fuzz_http:fuzz_one_input``, the worker's HTTP
  request handling.

Any other ``module:function`` works too. A target's module may define
``seed_inputs()`` (bodies to start from, written into the corpus at each
start) and ``TOKENS`` (byte strings for libFuzzer's dictionary).

A finding is anything that stops libFuzzer: an exception out of the target
(the wire target raises ``Disagreement`` when the two parsers differ), a
crash, a timeout, running out of memory, or with ``--sanitize`` an
AddressSanitizer or UndefinedBehaviorSanitizer report. libFuzzer writes the
input that caused it to the artifact directory; make it a test.

``--sanitize`` builds the Cython extensions with clang under ASan and UBSan
and libFuzzer's coverage instrumentation (``-fsanitize=fuzzer-no-link``) into
a separate directory (``build/sanitized``; the in-place build is left as it
is), then fuzzes against that build with atheris' ``asan_with_fuzzer.so``
preloaded, as atheris' native_extension_fuzzing.md prescribes. Without it,
the normal build is fuzzed, guided by the coverage of the Python code only.

The driver runs the fuzzer in a child process (the preload must be in place
when the process starts), shows its output, and ends with a summary:
executions, executions per second, coverage (libFuzzer's ``cov`` edges and
``ft`` features) and findings. It exits 0 without findings, 1 with some.
Run one fuzzer at a time: libFuzzer keeps a core busy.
"""

import argparse
import glob
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TARGETS = {
    "wire": "mab.testing.fuzz_wire:fuzz_one_input",
    "worker": "mab.testing.fuzz_http:fuzz_one_input",
}

# -O1 and frame pointers: readable sanitizer stacks at a bearable speed.
# UBSan's checks stay recoverable in the code, and UBSAN_OPTIONS makes the
# first report fatal, so libFuzzer saves the input.
SANITIZE_CFLAGS = "-fsanitize=address,undefined,fuzzer-no-link -fno-omit-frame-pointer -g -O1"
ASAN_OPTIONS = "detect_leaks=0:allocator_may_return_null=1:quarantine_size_mb=64:symbolize=1:print_summary=1"
UBSAN_OPTIONS = "halt_on_error=1:print_stacktrace=1:print_summary=1"


def resolve_target(name):
    """``module:function`` for a named target or one given as such."""
    spec = TARGETS.get(name, name)
    module, _, function = spec.partition(":")
    if not module or not function:
        sys.exit(f"fuzz.py: unknown target {name!r}: give one of {', '.join(TARGETS)} or module:function")
    return spec


def load_target(spec):
    module_name, _, function = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        sys.exit(f"fuzz.py: cannot import {module_name} for target {spec}: {exc}")
    if not callable(getattr(module, function, None)):
        sys.exit(f"fuzz.py: {module_name} has no function {function}")
    return module, getattr(module, function)


# -- the sanitized build ---------------------------------------------------------


def sanitized_build(build_dir):
    """Build mab with ASan, UBSan and coverage instrumentation into
    ``build_dir``; return the directory to put first on PYTHONPATH."""
    clang = shutil.which("clang")
    if clang is None:
        sys.exit("fuzz.py: --sanitize needs clang (Debian: apt-get install clang)")
    lib = os.path.join(build_dir, "lib")
    env = dict(
        os.environ,
        CC=clang,
        CXX=shutil.which("clang++") or clang,
        LDSHARED=f"{clang} -shared",
        CFLAGS=SANITIZE_CFLAGS,
        # The OpenMP probe of setup.py runs a program; it needs no sanitizer to pass.
        ASAN_OPTIONS="detect_leaks=0",
    )
    env.pop("MAB_REQUIRE_OPENMP", None)
    print(f"fuzz.py: building the sanitized extensions into {lib}", file=sys.stderr, flush=True)
    # build_py copies the Python modules next to the extensions, so that the
    # directory is a whole mab package; build_ext compiles into it, not in place.
    run = subprocess.run(
        [sys.executable, "setup.py", "build", "--build-base", build_dir, "--build-lib", lib],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    if run.returncode != 0:
        sys.exit(f"fuzz.py: the sanitized build failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    wire = glob.glob(os.path.join(lib, "mab", "_wire.*.so"))
    if not wire:
        sys.exit(f"fuzz.py: the sanitized build made no mab/_wire extension in {lib}")
    symbols = subprocess.run(["nm", "-D", "--undefined-only", wire[0]], capture_output=True, text=True).stdout
    if "__asan_" not in symbols or "__sanitizer_cov" not in symbols:
        sys.exit(f"fuzz.py: {wire[0]} is not instrumented (no __asan_ or __sanitizer_cov symbols)")
    return lib


def sanitizer_environment(lib):
    import atheris

    preload = os.path.join(atheris.path(), "asan_with_fuzzer.so")
    if not os.path.exists(preload):
        sys.exit(f"fuzz.py: atheris has no {preload}; see atheris' native_extension_fuzzing.md")
    return {
        "LD_PRELOAD": preload,
        "ASAN_OPTIONS": ASAN_OPTIONS,
        "UBSAN_OPTIONS": UBSAN_OPTIONS,
        "PYTHONPATH": os.pathsep.join(filter(None, [lib, os.environ.get("PYTHONPATH")])),
        # Every Python object its own malloc, so ASan's red zones surround
        # each bytes object the compiled code reads (pymalloc packs them).
        "PYTHONMALLOC": "malloc",
    }


# -- corpus and dictionary -------------------------------------------------------


def seed_corpus(module, corpus):
    """Write the target's seed inputs into the corpus directory; return how many."""
    os.makedirs(corpus, exist_ok=True)
    seeds = list(getattr(module, "seed_inputs", lambda: [])()) or [b""]
    for seed in seeds:
        path = os.path.join(corpus, "seed-" + hashlib.sha1(seed).hexdigest()[:16])
        with open(path, "wb") as f:
            f.write(seed)
    return len(seeds)


def write_dictionary(module, path):
    """libFuzzer's dictionary file from the module's TOKENS, or None."""
    tokens = getattr(module, "TOKENS", None)
    if not tokens:
        return None
    with open(path, "w") as f:
        for i, token in enumerate(tokens):
            text = "".join(
                chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02x}" for b in token
            )
            f.write(f'token{i}="{text}"\n')
    return path


# -- the report ------------------------------------------------------------------

STATUS_LINE = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+)(?: corp: (\d+)/(\S+))?.*?(?: exec/s: (\d+))?(?: rss: (\d+)Mb)?", re.M)
FINDING = re.compile(
    r"(ERROR: AddressSanitizer|ERROR: UndefinedBehaviorSanitizer|runtime error:|ERROR: libFuzzer|"
    r"=== Uncaught Python exception|Uncaught Python exception|deadly signal|SUMMARY: )"
)


def summarize(log, artifacts, started_with, seconds):
    """The figures of one run from libFuzzer's output."""
    statuses = STATUS_LINE.findall(log)
    stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", log, re.M))
    last = statuses[-1] if statuses else None
    executions = int(stats.get("number_of_executed_units", last[0] if last else 0))
    summary = {
        "seconds": round(seconds, 1),
        "executions": executions,
        "executions_per_second": int(stats["average_exec_per_sec"]) if "average_exec_per_sec" in stats
        else round(executions / seconds) if seconds else 0,
        "cov": int(last[2]) if last else None,
        "ft": int(last[3]) if last else None,
        "corpus_inputs": int(last[4]) if last and last[4] else None,
        "new_units_added": int(stats["new_units_added"]) if "new_units_added" in stats else None,
        "peak_rss_mb": int(stats["peak_rss_mb"]) if "peak_rss_mb" in stats else None,
        "findings": sorted(set(os.listdir(artifacts)) - started_with) if os.path.isdir(artifacts) else [],
        "reports": sorted({m.group(1) for m in FINDING.finditer(log)}),
    }
    return summary


# -- the child: the fuzzing process ----------------------------------------------


def run_child(spec, expect_lib, libfuzzer_args):
    import atheris

    module_name = spec.partition(":")[0]
    # Python coverage of the target's own package guides the search too.
    with atheris.instrument_imports(include=[module_name.split(".")[0]]):
        _, function = load_target(spec)
    if expect_lib:
        import mab._wire

        if not os.path.realpath(mab._wire.__file__).startswith(os.path.realpath(expect_lib)):
            sys.exit(f"fuzz.py: mab._wire came from {mab._wire.__file__}, not the sanitized build in {expect_lib}")
    wire = sys.modules.get("mab._wire")
    print(f"fuzz.py: fuzzing {spec}" + (f" with mab._wire from {wire.__file__}" if wire else ""), file=sys.stderr, flush=True)
    atheris.Setup([sys.argv[0]] + libfuzzer_args, function)
    atheris.Fuzz()


# -- the driver ------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="wire", help=f"{', '.join(TARGETS)} or module:function (default: wire)")
    parser.add_argument("--seconds", type=int, default=60, help="how long to fuzz (default 60)")
    parser.add_argument("--work-dir", help="for the corpus, the findings (artifacts/), the dictionary and the "
                        "log (default: build/fuzz/<target>, or <target>-sanitized)")
    parser.add_argument("--corpus", help="corpus directory, kept between runs (default: <work-dir>/corpus)")
    parser.add_argument("--sanitize", action="store_true", help="fuzz a build under AddressSanitizer and UBSan")
    parser.add_argument("--build-dir", default=os.path.join(ROOT, "build", "sanitized"), help="the sanitized build's directory")
    parser.add_argument("--max-len", type=int, default=8192, help="the largest input in bytes (default 8192)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it counts as a finding")
    parser.add_argument("--rss-limit-mb", type=int, default=4096, help="memory one run may take (default 4096 MB)")
    parser.add_argument("--summary", help="also write the summary as JSON to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--expect-lib", help=argparse.SUPPRESS)
    parser.add_argument("libfuzzer_args", nargs="*", help="more libFuzzer flags, after --")
    args = parser.parse_args(argv)

    spec = resolve_target(args.target)
    if args.child:
        return run_child(spec, args.expect_lib, args.libfuzzer_args)

    try:
        import atheris  # noqa: F401
    except ImportError:
        sys.exit("fuzz.py: atheris is not installed: pip install -e '.[fuzz]'")
    module, _ = load_target(spec)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", args.target)
    work = os.path.abspath(args.work_dir or os.path.join(ROOT, "build", "fuzz", slug + ("-sanitized" if args.sanitize else "")))
    corpus = os.path.abspath(args.corpus or os.path.join(work, "corpus"))
    artifacts = os.path.join(work, "artifacts")
    os.makedirs(artifacts, exist_ok=True)
    seeds = seed_corpus(module, corpus)
    dictionary = write_dictionary(module, os.path.join(work, "tokens.dict"))

    env = dict(os.environ)
    lib = None
    if args.sanitize:
        lib = sanitized_build(os.path.abspath(args.build_dir))
        env.update(sanitizer_environment(lib))

    libfuzzer = [
        f"-max_total_time={args.seconds}",
        f"-max_len={args.max_len}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-artifact_prefix={artifacts}{os.sep}",
        "-print_final_stats=1",
        *([f"-dict={dictionary}"] if dictionary else []),
        *args.libfuzzer_args,
        corpus,
    ]
    command = [sys.executable, os.path.abspath(__file__), "--child", "--target", spec,
               *(["--expect-lib", lib] if lib else []), "--", *libfuzzer]
    shown_env = " ".join(f"{k}={env[k]}" for k in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "PYTHONPATH", "PYTHONMALLOC") if k in env and args.sanitize)
    print(f"fuzz.py: {seeds} seed inputs in {corpus}", file=sys.stderr)
    print(f"fuzz.py: running {shown_env} {' '.join(command)}", file=sys.stderr, flush=True)

    started_with = set(os.listdir(artifacts))
    log_path = os.path.join(work, "last-run.log")
    start = time.monotonic()
    with open(log_path, "w") as log_file:
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 errors="replace", cwd=ROOT)
        try:
            for line in child.stdout:
                sys.stderr.write(line)
                log_file.write(line)
            child.wait(timeout=args.seconds + 300)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    elapsed = time.monotonic() - start
    with open(log_path) as f:
        log = f.read()

    summary = summarize(log, artifacts, started_with, elapsed)
    summary.update(target=spec, sanitized=args.sanitize, exit_code=child.returncode, command=command,
                   corpus=corpus, artifacts=artifacts, log=log_path)
    if args.sanitize:
        summary["environment"] = {k: env[k] for k in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "PYTHONPATH", "PYTHONMALLOC")}
    found = bool(summary["findings"]) or child.returncode != 0
    print(
        f"\nfuzz.py: {spec}{' (ASan+UBSan build)' if args.sanitize else ''}: {summary['executions']} executions in "
        f"{summary['seconds']} s, {summary['executions_per_second']} exec/s, cov {summary['cov']} ft {summary['ft']}, "
        f"corpus {summary['corpus_inputs']} inputs; "
        + (f"FINDINGS (exit code {child.returncode}): {', '.join(summary['findings']) or 'see the log'} in {artifacts}"
           if found else "no findings"),
        file=sys.stderr,
    )
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
