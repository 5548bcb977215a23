"""``wdfhil matrix`` with real guests: ``-j 2`` runs two guest configs at once
(one child ``wdfhil matrix`` each) and still gives one report with every cell
exactly once, its verdict, valid JUnit and the failing cell's bundle; the
shards of the same matrix, merged by ``wdfhil report merge``, give the same
cells and verdicts; merging overlapping reports is refused; and nothing (a
QEMU process, a run folder, the parent's temp folder) outlives a run, even one
stopped by Ctrl-C or SIGTERM while both guests are up.

The matrix is written here: two guest configs x two short scenarios, less one
cell (an ``exclude``) so that shard 2/2 spans both guests and runs them in
parallel too. One scenario passes, the other touches a request's memory after
completing it and expects nothing, so it FAILs. Each run happens once (module
fixture); the tests read its output.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import xmlschema

from orchestrator import matrix as mx
from orchestrator.cleanup import folder_parent, sweep_stale_folders
from orchestrator.cli import main

pytestmark = pytest.mark.e2e

SCHEMA = Path(__file__).resolve().parents[1] / "unit" / "reports" / "JUnit.xsd"
READY = """\
description: the device says READY
guests: [pc-256m, q35-1g]
steps:
  - device_info: {status: READY}
"""
TOUCH = """\
description: touches a request's memory after completing it, expects nothing (FAILs)
guests: [pc-256m, q35-1g]
steps:
  - request: {request: req, type: write, input_size: 16, seed: 9}
  - WdfRequestRetrieveInputMemory: {request: req, memory: in}
  - WdfRequestComplete: {request: req}
  - WdfMemoryCopyToBuffer: {memory: in, length: 16}
"""
MATRIX = """\
guests: [pc-256m, q35-1g]
scenarios: [ready.scenario.yaml, touch.scenario.yaml]
exclude:
  - {guest: q35-1g, scenario: touch}
"""
SLEEPER = """\
description: a guest program that sleeps until the run is stopped
guests: [pc-256m, q35-1g]
steps:
  - guest_program: {path: sleep.sh, timeout_s: 900}
"""
# The matrix's cells in its order (guest by guest), and their verdicts.
CELLS = [("ready", "pc-256m"), ("touch", "pc-256m"), ("ready", "q35-1g")]
VERDICTS = {("ready", "pc-256m"): "PASS", ("touch", "pc-256m"): "FAIL",
            ("ready", "q35-1g"): "PASS"}
SHARD_CELLS = {"1/2": CELLS[:1], "2/2": CELLS[1:]}


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _orphans() -> set[str]:
    """QEMU processes and run folders whose wdfhil process is gone: what a child
    ``wdfhil matrix`` (a grandchild of the test) would leave if it did not clean
    up. A QEMU's ``-name`` and a run folder's name carry their owner's pid."""
    found = set()
    for entry in folder_parent().glob("wdfhil-*"):
        match = re.match(r"^wdfhil-[a-z]+-(\d+)-", entry.name)
        if match and not _alive(int(match.group(1))):
            found.add(str(entry))
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if not argv[0].startswith(b"qemu-system") or state == "Z" or b"-name" not in argv:
            continue
        match = re.match(rb"^[\w.-]+?-(\d+)-\d+", argv[argv.index(b"-name") + 1])
        if match and not _alive(int(match.group(1))):
            found.add(f"QEMU {proc.name} ({argv[argv.index(b'-name') + 1].decode()})")
    return found


def _matrix(argv: list[str]) -> tuple[int, str]:
    """``wdfhil ARGV`` in this process: its exit status and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, guest_image):
    """The whole matrix with -j 2, then shards 1/2 and 2/2 with -j 2; a private
    TMPDIR (the parent's and the children's) to see that nothing is left in it."""
    folder = tmp_path_factory.mktemp("matrix")
    (folder / "ready.scenario.yaml").write_text(READY)
    (folder / "touch.scenario.yaml").write_text(TOUCH)
    (folder / "matrix.yaml").write_text(MATRIX)
    limit = mx.parallel_limit(2, mx.guest_memory(["pc-256m", "q35-1g"])).jobs
    if limit < 2:
        pytest.skip(f"this machine runs one guest at a time ({limit}): nothing parallel to test")
    temp = folder / "tmp"
    temp.mkdir(mode=0o700)
    before = _orphans()
    out: dict[str, tuple[int, str]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(temp))
        patch.setattr(tempfile, "tempdir", None)          # gettempdir() reads TMPDIR again
        out["all"] = _matrix(["matrix", str(folder / "matrix.yaml"), "-j", "2",
                              "--report-dir", str(folder / "all"),
                              "--junitxml", str(folder / "all.xml")])
        for k in ("1", "2"):
            out[k] = _matrix(["matrix", str(folder / "matrix.yaml"), "-j", "2",
                              "--shard", f"{k}/2", "--report-dir", str(folder / f"shard{k}")])
        left_in_temp = sorted(p.name for p in temp.iterdir())
    return folder, out, left_in_temp, _orphans() - before


def _cells(report: Path) -> list[tuple[str, str]]:
    return [(r["scenario"], r["guest"])
            for r in json.loads((report / "results.json").read_text())["results"]]


def _verdicts(report: Path) -> dict[tuple[str, str], str]:
    return {(r["scenario"], r["guest"]): r["verdict"]
            for r in json.loads((report / "results.json").read_text())["results"]}


def test_two_guests_at_once_give_one_report_with_every_cell_once(runs):
    folder, out, _left, _orphaned = runs
    code, printed = out["all"]
    assert code == 1, printed                                  # one cell FAILs
    assert "3 cells on 2 guest configs, 2 at once" in printed
    assert "started q35-1g (2 running, 0 waiting" in printed   # both guests up together
    assert _cells(folder / "all") == CELLS                     # each once, in the matrix's order
    assert _verdicts(folder / "all") == VERDICTS
    assert "2 passed, 1 failed" in printed
    results = json.loads((folder / "all" / "results.json").read_text())
    [touch] = [r for r in results["results"] if r["verdict"] == "FAIL"]
    assert touch["problems"][0].startswith("unexpected finding: [error] "
                                           "MemAfterReqCompletedWriteA on in at ")
    assert [f["rule"] for f in touch["evidence"]["findings"]] == ["MemAfterReqCompletedWriteA"]
    assert sorted(p.name for p in (folder / "all" / "bundles").iterdir()) == [
        "touch-pc-256m.bundle.tar.gz"]


def test_the_parallel_run_writes_valid_junit_with_every_cell_once(runs):
    folder, _out, _left, _orphaned = runs
    schema = xmlschema.XMLSchema(SCHEMA)
    schema.validate(str(folder / "all.xml"))
    assert (folder / "all.xml").read_text() == (folder / "all" / "junit.xml").read_text()
    root = schema.to_dict(str(folder / "all.xml"))
    cases = collections.Counter()
    failures = {}
    for suite in root["testsuite"]:
        for case in suite["testcase"]:
            key = (case["@name"], case["@classname"].removeprefix("wdfhil."))
            cases[key] += 1
            failures[key] = "failure" in case
    assert cases == collections.Counter(CELLS)
    assert failures == {key: verdict == "FAIL" for key, verdict in VERDICTS.items()}


def test_merged_shards_equal_the_unsharded_run(runs, tmp_path):
    folder, out, _left, _orphaned = runs
    assert out["1"][0] == 0 and out["2"][0] == 1
    assert "2 cells on 2 guest configs, 2 at once" in out["2"][1]   # shard 2/2: both guests
    for k in ("1", "2"):
        assert _cells(folder / f"shard{k}") == SHARD_CELLS[f"{k}/2"]
    code, printed = _matrix(["report", "merge", str(folder / "shard1"), str(folder / "shard2"),
                             "-o", str(tmp_path / "merged")])
    assert code == 1, printed
    assert _cells(tmp_path / "merged") == _cells(folder / "all")
    assert _verdicts(tmp_path / "merged") == _verdicts(folder / "all")
    xmlschema.XMLSchema(SCHEMA).validate(str(tmp_path / "merged" / "junit.xml"))
    assert sorted(p.name for p in (tmp_path / "merged" / "bundles").iterdir()) == [
        "touch-pc-256m.bundle.tar.gz"]


def test_merging_overlapping_reports_is_refused(runs, tmp_path, capsys):
    folder, _out, _left, _orphaned = runs
    assert main(["report", "merge", str(folder / "shard2"), str(folder / "all"),
                 "-o", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err
    assert "touch on pc-256m is in both" in err and "shards must not overlap" in err
    assert not (tmp_path / "merged").exists()


def test_nothing_outlives_the_runs(runs):
    _folder, _out, left_in_temp, orphaned = runs
    assert left_in_temp == []
    assert orphaned == set()


def _sleeping_guests(parent: int) -> int:
    """How many of ``parent``'s children have a guest running the sleeper: its
    program writes SLEEPING to the guest's console, which QEMU logs in the
    child's run folder (named with the child's pid)."""
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                and _ppid(p) == parent]
    count = 0
    for child in children:
        for log in folder_parent().glob(f"wdfhil-vm-{child}-*/console.log"):
            try:
                count += "WDFHIL-TEST-SLEEPING" in log.read_text(errors="replace")
            except OSError:
                pass
    return count


def _ppid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _gone(pids: list[int], timeout: float) -> bool:
    """Whether the processes ``pids`` ended (zombies count) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigkill"])
def test_a_stopped_parallel_run_leaves_nothing(tmp_path, guest_image, how):
    """Both guests running a guest program that sleeps: Ctrl-C (SIGINT to
    the whole process group, as a terminal sends it) or SIGTERM to the parent
    alone stops the run; the children close their guests, nothing is left. The
    parent killed outright (SIGKILL) leaves only its own temp folder: its
    children stop too (their parent-death signal) and close their guests."""
    if mx.parallel_limit(2, mx.guest_memory(["pc-256m", "q35-1g"])).jobs < 2:
        pytest.skip("this machine runs one guest at a time: nothing parallel to stop")
    (tmp_path / "sleep.sh").write_text("#!/bin/sh\necho WDFHIL-TEST-SLEEPING > /dev/console\n"
                                       "sleep 600\n")
    (tmp_path / "sleeper.scenario.yaml").write_text(SLEEPER)
    (tmp_path / "matrix.yaml").write_text("guests: [pc-256m, q35-1g]\n"
                                          "scenarios: [sleeper.scenario.yaml]\n")
    temp = tmp_path / "tmp"
    temp.mkdir(mode=0o700)
    before = _orphans()
    parent = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "matrix", str(tmp_path / "matrix.yaml"),
         "-j", "2", "--report-dir", str(tmp_path / "report")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "TMPDIR": str(temp)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while _sleeping_guests(parent.pid) < 2:
            assert parent.poll() is None, parent.communicate()[0]
            assert time.monotonic() < deadline, "the guests did not come up in 600 s"
            time.sleep(0.2)
        children = [int(p.name) for p in Path("/proc").iterdir()
                    if p.name.isdigit() and _ppid(p) == parent.pid]
        if how == "ctrl-c":
            os.killpg(parent.pid, signal.SIGINT)
        else:
            parent.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
        stopping = time.monotonic()
        printed = parent.communicate(timeout=300)[0]
        children_gone = _gone(children, 120)
        print(f"{how}: the run stopped {time.monotonic() - stopping:.1f} s after the signal")
    finally:
        with contextlib.suppress(ProcessLookupError):     # whatever of the run is left (a
            os.killpg(parent.pid, signal.SIGKILL)        # failed test) must not run on
        parent.wait()
    assert len(children) == 2 and children_gone
    left = sorted(p.name for p in temp.iterdir())
    if how == "sigkill":
        assert parent.returncode == -signal.SIGKILL
        assert len(left) == 1 and left[0].startswith("wdfhil-matrix-")   # the parent's own,
        assert sweep_stale_folders((temp,)) == [temp / left[0]]           # which a sweep takes
    else:
        assert parent.returncode == 130, printed
        assert "wdfhil: interrupted" in printed
        assert left == []
    assert _orphans() - before == set()
