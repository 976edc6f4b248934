"""The one long-lived process in the guest: runs jobs the host drops into the shared
results directory and writes their outcome back. Started by the guest's boot script.

Python starts in ~1 s and `import pyroute2` takes 3-5 s under TCG, so this process imports
once and forks per `call` job (a fork is cheap; the child may enter a namespace and
cannot disturb the next job). Protocol, all files JSON, written then renamed:

    jobs/NAME.json   {"kind": "sh", "argv": [...], "timeout": s, "input": str | None}
                     {"kind": "call", "func": "module:function", "kwargs": {...}, "timeout": s}
                     {"kind": "exit"}
    done/NAME.json   {"rc": int, "stdout": str, "stderr": str, "result": ..., "error": str,
                      "seconds": float}
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path


def _write(path: Path, obj: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.rename(tmp, path)


def _sh(job: dict) -> dict:
    try:
        r = subprocess.run(job["argv"], input=job.get("input"), capture_output=True,
                           text=True, timeout=job.get("timeout", 60))
        return {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr}
    except subprocess.TimeoutExpired as e:
        return {"rc": -1, "stdout": str(e.stdout or ""), "stderr": f"timeout: {e}"}
    except OSError as e:
        return {"rc": -1, "stdout": "", "stderr": f"{type(e).__name__}: {e}"}


def _child(job: dict, wfd: int) -> None:
    try:
        mod, _, name = job["func"].partition(":")
        fn = getattr(importlib.import_module(mod), name)
        out = {"rc": 0, "result": fn(**job.get("kwargs", {}))}
    except BaseException:  # the host shows the traceback as the test's failure
        out = {"rc": 1, "error": traceback.format_exc()}
    try:
        data = json.dumps(out).encode()
    except (TypeError, ValueError) as e:
        data = json.dumps({"rc": 1, "error": f"result not JSON: {e}"}).encode()
    with os.fdopen(wfd, "wb") as w:
        w.write(data)


def _call(job: dict) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        code = 0
        try:
            _child(job, w)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(w)
    deadline = time.monotonic() + job.get("timeout", 120)
    chunks: list[bytes] = []
    with os.fdopen(r, "rb") as rf:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"rc": -1, "error": f"timeout after {job.get('timeout', 120)}s"}
            if select.select([rf], [], [], min(left, 1.0))[0]:
                chunk = os.read(rf.fileno(), 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return {"rc": -1, "error": f"job process died (wait status {status})"}
    return json.loads(b"".join(chunks))


def serve(share: Path, poll: float = 0.05) -> None:
    jobs, done = share / "jobs", share / "done"
    jobs.mkdir(exist_ok=True)
    done.mkdir(exist_ok=True)
    for warm in ("pyroute2", "nodeward.collect.wireguard", "nodeward.checks.encryption",
                 "tests.lab"):
        importlib.import_module(warm)
    _write(share / "ready.json", {"uname": os.uname().release, "pid": os.getpid()})
    while True:
        names = sorted(n for n in os.listdir(jobs) if n.endswith(".json"))
        if not names:
            time.sleep(poll)
            continue
        for name in names:
            job = json.loads((jobs / name).read_text())
            os.unlink(jobs / name)
            if job["kind"] == "exit":
                _write(done / name, {"rc": 0})
                return
            t0 = time.monotonic()
            out = _sh(job) if job["kind"] == "sh" else _call(job)
            out["seconds"] = round(time.monotonic() - t0, 3)
            _write(done / name, out)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())  # the repository root: tests.* importable
    serve(Path(sys.argv[1]))
