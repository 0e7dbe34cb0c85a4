"""run_with_progress: work in a child process, elapsed time reported meanwhile.

Each case runs in a process of its own: the helper forks, and the test
process may hold threads (gRPC's, from other tests) that must not be forked.
"""

import subprocess
import sys
import textwrap

PRELUDE = """
import io, os, sys, time
from mab.cli.progress import run_with_progress
from mab.errors import DataError

class Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty
    def isatty(self):
        return self.tty

def slow(x):
    time.sleep(1.5)
    return {"double": x * 2, "pid": os.getpid()}

def bad_data():
    raise DataError("items.csv: line 3: not a count")

class Odd(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a} {b}")

def odd():
    raise Odd(1, 2)

def dies():
    os._exit(3)
"""


def run(body):
    process = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    return process.stdout


def test_returns_the_result_computed_in_a_child_and_reports_meanwhile():
    out = run("""
        stream = Stream(tty=False)
        result = run_with_progress("working", slow, 21, stream=stream, interval=0.2)
        print(result["double"], result["pid"] != os.getpid())
        print(repr(stream.getvalue()))
    """).splitlines()
    assert out[0] == "42 True"
    lines = eval(out[1]).splitlines()
    # 1.5 s at one line per 0.2 s: a few lines even on a busy machine.
    assert len(lines) >= 2 and all(line.startswith("working ... ") and line.endswith(" s") for line in lines)


def test_on_a_terminal_the_line_is_redrawn_then_erased():
    out = run("""
        stream = Stream(tty=True)
        run_with_progress("working", slow, 1, stream=stream, interval=0.2)
        print(repr(stream.getvalue()))
    """)
    written = eval(out)
    assert written.startswith("\rworking ... ") and written.endswith("\r\033[K") and "\n" not in written


def test_nothing_is_printed_for_quick_work():
    out = run("""
        stream = Stream(tty=False)
        print(run_with_progress("working", len, "abc", stream=stream, interval=5), repr(stream.getvalue()))
    """)
    assert out.strip() == "3 ''"


def test_exceptions_come_back():
    out = run("""
        for function in (bad_data, odd, dies):
            try:
                run_with_progress("working", function, stream=Stream(tty=False))
            except Exception as exc:
                print(type(exc).__name__, "|", str(exc).strip().splitlines()[-1])
    """).splitlines()
    assert out[0] == "DataError | items.csv: line 3: not a count"
    assert out[1] == "RuntimeError | Odd: 1 2"        # not picklable: the child's traceback
    assert out[2] == "RuntimeError | working: the worker process died (exit status 3)"
