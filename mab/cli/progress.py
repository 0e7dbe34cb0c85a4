"""Progress of a long, compiled step: elapsed time on stderr while it runs.

Compiling a CSV (about 8 s for 10 million rows) runs compiled loops that
hold the GIL: mab.stores.embedded.compile_csv held it for up to 0.35 s at a
time on 2 million rows here, so a thread of this process would fall silent
for seconds on large files, and could not stop the work on Ctrl-C. The work
runs in a forked child process instead, and this process reports (and kills
the child if it is interrupted). Forking is safe here: the command's process
is single-threaded and has run no OpenMP region (it never samples).
"""

import multiprocessing
import pickle
import sys
import time
import traceback

#: Seconds between progress reports: on a terminal the line is redrawn in
#: place; elsewhere (a log, a pipeline) a line is written now and then.
TTY_INTERVAL = 0.5
LOG_INTERVAL = 5.0


def _child(send, function, args):
    try:
        send.send((True, function(*args)))
        return
    except BaseException as exc:     # noqa: BLE001 - everything goes back to the parent
        error = exc
    try:
        # An exception that does not survive pickling (one whose __init__
        # takes other arguments, say) reaches the parent as text instead.
        pickle.loads(pickle.dumps(error))
    except Exception:
        error = RuntimeError("".join(traceback.format_exception(error)))
    send.send((False, error))


def run_with_progress(label, function, *args, stream=None, interval=None):
    """Call ``function(*args)`` in a child process and return its result,
    writing ``label`` and the elapsed seconds to ``stream`` (default stderr)
    every ``interval`` seconds while it runs (default: 0.5 s on a terminal,
    redrawn in place, else 5 s, one line each).

    ``function`` must be a module-level function; its result and any
    exception it raises must be picklable (an exception that is not comes
    back as a RuntimeError with the child's traceback). The exception is
    raised again here. Raises RuntimeError if the child dies without an
    answer (killed by the OOM killer, say). On KeyboardInterrupt the child
    is killed before the exception propagates.
    """
    stream = sys.stderr if stream is None else stream
    tty = stream.isatty()
    if interval is None:
        interval = TTY_INTERVAL if tty else LOG_INTERVAL
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, function, args), daemon=True)
    started = time.monotonic()
    child.start()
    send.close()
    reported = answered = False
    try:
        # A child that dies closes its end of the pipe: poll() is then true
        # and recv() raises EOFError.
        while not receive.poll(interval):
            elapsed = time.monotonic() - started
            if tty:
                stream.write(f"\r{label} ... {elapsed:.0f} s")
            else:
                stream.write(f"{label} ... {elapsed:.0f} s\n")
            stream.flush()
            reported = True
        try:
            ok, value = receive.recv()
            answered = True
        except EOFError:
            child.join()
            raise RuntimeError(f"{label}: the worker process died (exit status {child.exitcode})") from None
    finally:
        if tty and reported:
            stream.write("\r\033[K")     # erase the progress line
            stream.flush()
        if not answered and child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if ok:
        return value
    raise value
