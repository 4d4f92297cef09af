"""Run many `haic` command lines cheaply, each as a crash-proof process of its own.

``python tests/app/_forked.py CASES.json OUT.json``: imports the CLI once, then forks one child
per command line (the expensive imports are shared, so a case costs milliseconds, not seconds).
The child runs ``cli.main(argv)`` the way the ``haic`` entry point does - an exception that
escapes is printed as Python prints it (a traceback) and exits 1 - with its stdout / stderr sent
to files. The parent records each case's status, or the signal that killed it, or a timeout.
A crash (SIGSEGV, abort) or a hang fails that case only, never the pytest run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback


def _child(argv: list[str], out: str, err: str) -> None:
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - lives as long as the child
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    sys.stdin = open(os.devnull)  # noqa: SIM115
    status = 1
    try:
        import torch

        torch.set_num_threads(1)  # no thread pool shared with the parent after fork
        from haic_kernels.app import cli

        status = cli.main(argv)
    except SystemExit as e:
        code = e.code
        if isinstance(code, int) or code is None:
            status = code or 0
        else:
            print(code, file=sys.stderr)
    except BaseException:  # what the interpreter would print for an uncaught exception
        traceback.print_exc()
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status if isinstance(status, int) else 1)


def run_case(argv: list[str], timeout: float) -> dict:
    """One command line in a forked child: {"argv", "status" | "signal" | "timeout", "stdout",
    "stderr", "seconds"}."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(argv, out, err)
        result: dict = {"argv": argv}
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() - t0 > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                result["timeout"] = True
                status = None
                break
            time.sleep(0.01)
        if status is not None:
            if os.WIFSIGNALED(status):
                result["signal"] = os.WTERMSIG(status)
            else:
                result["status"] = os.WEXITSTATUS(status)
        result["seconds"] = time.perf_counter() - t0
        for key, path in (("stdout", out), ("stderr", err)):
            with open(path, errors="replace") as f:
                result[key] = f.read()
    return result


def main() -> None:
    cases_file, out_file = sys.argv[1:3]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 120.0
    with open(cases_file) as f:
        cases = json.load(f)
    import haic_kernels.app.cli  # noqa: F401 - imported once, before the forks

    results = [run_case(argv, timeout) for argv in cases]
    with open(out_file, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
