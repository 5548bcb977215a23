"""``wdfhil matrix -j N``: the matrix run on N guests at once, one child
``wdfhil matrix FILE --only guest=G`` a guest config (QEMU dies with the thread
that started it, so one process a guest keeps them apart), their results merged
into one report in the matrix's order.

Nothing outlives the run: Ctrl-C, SIGTERM and SIGHUP stop the children, which
close their guests (after a Ctrl-C, which a terminal sends them too, they are
given CTRL_C_GRACE to do it alone, so no second signal cuts their clean-up
short); a child also stops when this process is killed outright (its parent-death
signal), and the temp folder is a run folder that ``wdfhil vm sweep`` takes then.
A child that dies without results leaves its cells in the report as ERROR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from orchestrator.cleanup import install_sigterm_handler, signals_deferred
from orchestrator.matrix import parse_only
from orchestrator.report_json import load_results
from orchestrator.scenario_result import ERROR, ScenarioResult, format_table
from wdfhil.private_dirs import private_dir

if TYPE_CHECKING:
    from orchestrator.matrix import Matrix


def _parent_death_signal() -> Callable[[], None] | None:
    """prctl(PR_SET_PDEATHSIG, SIGTERM), looked up once here (a forked child should
    do no more than call it): a child then stops, closing its guest, even when
    ``wdfhil matrix`` itself is killed (SIGKILL, the OOM killer) and cannot stop it."""
    import ctypes
    import ctypes.util

    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, parent = 1, os.getpid()

    def stop_with_parent() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent:           # it died before prctl: no signal will come
            os._exit(1)
    return stop_with_parent


# After Ctrl-C, how long children (which got the terminal's SIGINT too) may take to
# close their guests on their own before they are sent SIGTERM.
CTRL_C_GRACE = 15.0


def run_parallel(matrix: "Matrix", limit: int, args: argparse.Namespace,
                 outputs: Callable[..., None]) -> int:
    """One child ``wdfhil matrix --only guest=G`` a guest config, ``limit`` at once;
    their results merged into one table and written by ``outputs`` (the results
    file, the report folder, JUnit: orchestrator.scenario_command). Children are
    stopped (SIGTERM: they close their guests) if this process is interrupted: by
    Ctrl-C, or by SIGTERM or SIGHUP, which unwind here as they do around a VM
    (orchestrator.cleanup), so the children and the temp folder never outlive it.
    The exit status: 0 all passed, else 1."""
    install_sigterm_handler()
    stop_with_parent = _parent_death_signal()

    waiting = list(matrix.guests)
    running: dict[str, tuple[subprocess.Popen, Path, object]] = {}
    results: list[ScenarioResult] = []
    failed_children: dict[str, str] = {}         # guest -> why its child gave no results
    started = time.monotonic()
    print(f"matrix {matrix.path}: {len(matrix.cells)} cells on {len(waiting)} guest configs, "
          f"{limit} at once", flush=True)
    with private_dir("wdfhil-matrix-") as folder:     # a run folder: swept if we are killed
        try:
            while waiting or running:
                while waiting and len(running) < limit:
                    guest = waiting.pop(0)
                    out = Path(folder) / f"{guest}.json"
                    log = open(Path(folder) / f"{guest}.log", "w")
                    argv = [sys.executable, "-m", "orchestrator.cli", "matrix", str(matrix.path),
                            "--json", str(out), "--boot-timeout", str(args.boot_timeout),
                            "--report-dir", str(Path(folder) / f"{guest}-report"),
                            *_child_only(guest, _shard_only(matrix, guest, args))]
                    for folder_arg in args.guests_dir:
                        argv += ["--guests-dir", folder_arg]
                    running[guest] = (subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                       stdin=subprocess.DEVNULL,
                                                       preexec_fn=stop_with_parent), out, log)
                    print(f"started {guest} ({len(running)} running, {len(waiting)} waiting, "
                          f"{time.monotonic() - started:.0f} s)", flush=True)
                time.sleep(0.5)
                for guest, (child, out, log) in list(running.items()):
                    code = child.poll()
                    if code is None:
                        continue
                    log.close()
                    del running[guest]
                    text = (Path(folder) / f"{guest}.log").read_text(errors="replace")
                    if out.exists():
                        results += load_results(out)[0]
                        bundles = Path(folder) / f"{guest}-report" / "bundles"
                        if bundles.is_dir():
                            shutil.copytree(bundles, Path(folder) / "bundles", dirs_exist_ok=True)
                    if code not in (0, 1) or not out.exists():
                        failed_children[guest] = _last_words(code, text)
                        print(f"{guest}: the run failed (exit {code}):\n{text[-3000:]}", flush=True)
                    else:
                        done = [r for r in results if r.guest == guest]
                        print(f"finished {guest}: {sum(r.passed for r in done)}/{len(done)} "
                              f"passed ({time.monotonic() - started:.0f} s)", flush=True)
                        for r in done:
                            if not r.passed:
                                print(r.explain(), flush=True)
        finally:
            unwinding = sys.exc_info()[1]
            with signals_deferred():            # a second Ctrl-C must not orphan a child
                _stop_children([child for child, _out, _log in running.values()],
                               on_their_own=CTRL_C_GRACE if type(unwinding) is KeyboardInterrupt
                               else 0.0)
                for _child, _out, log in running.values():
                    log.close()
        results = in_matrix_order(results + _not_run(matrix, results, failed_children), matrix)
        print(format_table(results), flush=True)
        outputs(results, "", args.json, args.report_dir, args.junitxml,
                bundles_from=Path(folder) / "bundles")
    if failed_children:
        print(f"guest configs whose run failed: {', '.join(failed_children)}", flush=True)
    return 0 if results and not failed_children and all(r.passed for r in results) else 1


def _last_words(code: int, log: str) -> str:
    """Why a child gave no results: its exit status and last line of output."""
    lines = [line for line in log.splitlines() if line.strip()]
    return f"exit {code}" + (f": {lines[-1].strip()[:300]}" if lines else "")


def _not_run(matrix: "Matrix", results: list[ScenarioResult],
             failed: dict[str, str]) -> list[ScenarioResult]:
    """An ERROR result for each cell of a guest config whose child failed before it
    gave that cell's result, so the report still has every cell, once."""
    have = {(str(Path(r.path).resolve()), r.guest) for r in results}
    return [ScenarioResult(c.scenario.name, str(c.scenario.path), c.guest, ERROR,
                           problems=[f"not run: the wdfhil matrix run of {c.guest} failed "
                                     f"({failed[c.guest]})"])
            for c in matrix.cells
            if c.guest in failed and (str(c.scenario.path.resolve()), c.guest) not in have]


def _stop_children(children: list[subprocess.Popen], grace: float = 60.0,
                   on_their_own: float = 0.0) -> None:
    """SIGTERM every child still running, then wait for all of them together (each
    closes its guest meanwhile); SIGKILL those that took more than ``grace`` s.
    ``on_their_own``: first let them end by themselves for up to that long (after a
    Ctrl-C, which a terminal sends to the children too: a SIGTERM on top would
    interrupt their clean-up)."""
    deadline = time.monotonic() + on_their_own
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def in_matrix_order(results: list[ScenarioResult], matrix: "Matrix") -> list[ScenarioResult]:
    """``results`` in the order of the matrix's cells (guest by guest, as written),
    not in the order the parallel children happened to finish: the same matrix
    then always gives the same report; results of no cell go last."""
    ordered = [c for cells in matrix.by_guest().values() for c in cells]
    order = {(str(c.scenario.path.resolve()), c.guest): i for i, c in enumerate(ordered)}
    return sorted(results, key=lambda r: order.get((str(Path(r.path).resolve()), r.guest),
                                                   len(order)))


def _shard_only(matrix: "Matrix", guest: str, args: argparse.Namespace) -> list[str]:
    """The --only filters a child runs: the user's, or (in a shard) the shard's cells
    of ``guest`` by scenario name."""
    if not args.shard:
        return args.only
    return [f"guest={guest},scenario={c.scenario.name}" for c in matrix.by_guest()[guest]]


def _child_only(guest: str, only: list[str]) -> list[str]:
    """The child's --only filters: the user's that can match this guest, each
    narrowed to it (or just guest=GUEST)."""
    rules = [r for r in parse_only(only) if r.get("guest", guest) == guest] or [{}]
    words: list[str] = []
    for rule in rules:
        words += ["--only", ",".join(f"{k}={v}" for k, v in {**rule, "guest": guest}.items())]
    return words


__all__ = ["CTRL_C_GRACE", "in_matrix_order", "run_parallel"]
