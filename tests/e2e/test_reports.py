"""Reports of a real run, end to end: ``wdfhil run`` on a real guest writes the
results, valid JUnit, an HTML report that a real headless browser renders with
the device's transfers, interrupts and faults and the pool map, and a
reproduction bundle for the failing scenario; ``wdfhil replay`` reruns the
bundle on a fresh guest and finds the same failure (and says so when it does
not, or when the bundle or its image cannot be had).

The failing scenario is the built-in verifier bug with its expectation removed,
so it FAILs with the finding the built-in one expects."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import xmlschema

from orchestrator.cli import main
from orchestrator.scenario import BUILTIN_SCENARIOS_DIR

from report_browser import check_report_page, headless_chromium

pytestmark = pytest.mark.e2e

SCHEMA = Path(__file__).resolve().parents[1] / "unit" / "reports" / "JUnit.xsd"
BUG = BUILTIN_SCENARIOS_DIR / "verifier-buffer-after-completion.scenario.yaml"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, guest_image):
    """One ``wdfhil run`` of the bug (FAIL), stale-dma and bug-overrun (PASS) on pc-256m."""
    folder = tmp_path_factory.mktemp("recorded")
    text = BUG.read_text()
    bug = folder / "bug.scenario.yaml"
    bug.write_text(text[:text.index("expect:")])            # the same steps, nothing expected
    code = main(["run", str(bug), "stale-dma", "bug-overrun", "--report-dir",
                 str(folder / "report"), "--junitxml", str(folder / "junit.xml")])
    return code, folder


def test_the_run_writes_results_junit_and_a_bundle(recorded):
    code, folder = recorded
    assert code == 1
    results = json.loads((folder / "report" / "results.json").read_text())
    verdicts = {r["scenario"]: r for r in results["results"]}
    assert {k: r["verdict"] for k, r in verdicts.items()} == {
        "bug": "FAIL", "stale-dma": "PASS", "bug-overrun": "PASS"}
    [finding] = verdicts["bug"]["evidence"]["findings"]
    assert (finding["rule"], finding["object"]["name"], finding["site"]["line"]) == (
        "MemAfterReqCompletedWriteA", "in", 8)
    assert [h["event"] for h in finding["history"]] == ["request presented", "retrieved",
                                                        "request completed"]
    events = [e["type"] for e in verdicts["stale-dma"]["evidence"]["events"]]
    assert events.count("dma") == 2 and "interrupt" in events      # the READ, then the stale write
    assert [e for e in verdicts["stale-dma"]["evidence"]["events"]
            if e["type"] == "fault"][0]["kind"] == "stale_dma"
    xmlschema.XMLSchema(SCHEMA).validate(str(folder / "junit.xml"))
    assert (folder / "junit.xml").read_text() == (folder / "report" / "junit.xml").read_text()
    [bundle] = (folder / "report" / "bundles").iterdir()
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))
        console = tar.extractfile("console.log").read()
        argv = tar.extractfile("qemu-cmdline.txt").read().decode()
    assert {"scenario/bug.scenario.yaml", "guest/pc-256m.yaml", "qemu.log", "trace.jsonl",
            "pool-window.bin", "pool-map.json", "guest-dmesg.txt"} <= names
    assert "WDFHIL-READY" in console.decode() and argv.startswith("qemu-system-x86_64 ")
    assert len(manifest["image"]["digest"]) == 64 and manifest["image"]["packages"]


def test_the_html_report_renders_in_a_browser(recorded):
    _code, folder = recorded
    with headless_chromium() as driver:
        counts = check_report_page(driver, folder / "report" / "report.html")
        order = [e.get_attribute("id") for e in driver.find_elements("css selector",
                                                                     "section.scenario")]
        titles = {s: driver.find_element("css selector", f"#{s} h2").text for s in order}
        stale = next(s for s in order if titles[s].endswith("stale-dma on pc-256m"))
        overrun = next(s for s in order if titles[s].endswith("bug-overrun on pc-256m"))
        bug = next(s for s in order if s not in (stale, overrun))

        def count(css: str) -> int:
            return len(driver.find_elements("css selector", css))
        assert count(f"#{stale} svg.timeline .ev-dma") == 2
        assert count(f"#{stale} svg.timeline .ev-interrupt") >= 1
        assert count(f"#{stale} svg.timeline .ev-fault") == 1
        assert count(f"#{bug} svg.poolmap .alloc") >= 1
        assert count(f"#{bug} svg.poolmap .redzone") >= 1
        finding = driver.find_element("css selector", f"#{bug} li.finding").text
        assert finding.startswith("[error] MemAfterReqCompletedWriteA on in at "
                                  "bug.scenario.yaml:8")
        assert counts["section.scenario"] == 3
        # the driver's CPU overrun: its mapping, the guard page, the write outlined past it
        assert count(f"#{overrun} svg.poolmap .cpu-object") == 1
        assert count(f"#{overrun} svg.poolmap .cpu-redzone") == 1
        assert count(f"#{overrun} svg.poolmap .cpu-access.offending") == 1
        offence = driver.find_element("css selector", f"#{overrun} ul.offences li.cpu").text
        assert offence.startswith("CPU write of 4770 bytes at 0x")
        assert "(BugCheck at buggy_drivers.py:52): 774 bytes past the end of the system " \
               "mapping of MDL" in offence and offence.endswith("into its guard page")


def test_replay_reproduces_the_recorded_failure(recorded, capsys):
    _code, folder = recorded
    [bundle] = (folder / "report" / "bundles").iterdir()
    assert main(["replay", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "REPRODUCED: FAIL with the same 1 finding(s)" in out
    assert "MemAfterReqCompletedWriteA at bug.scenario.yaml:8" in out


def _rewritten(bundle: Path, target: Path, change) -> Path:
    """A copy of ``bundle`` with its manifest changed by ``change(manifest)``."""
    with tarfile.open(bundle) as tar, tarfile.open(target, "w:gz") as out:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            if member.name == "manifest.json":
                manifest = json.loads(data)
                change(manifest)
                data = json.dumps(manifest).encode()
                member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return target


def test_replay_says_when_the_findings_differ(recorded, tmp_path, capsys):
    _code, folder = recorded
    [bundle] = (folder / "report" / "bundles").iterdir()

    def elsewhere(manifest):
        manifest["findings"][0]["site"]["line"] = 99
    assert main(["replay", str(_rewritten(bundle, tmp_path / "b.tar.gz", elsewhere))]) == 1
    out = capsys.readouterr().out
    assert "NOT REPRODUCED" in out and "bug.scenario.yaml:99" in out


def test_replay_refuses_a_bad_bundle_and_another_image(recorded, tmp_path, capsys):
    _code, folder = recorded
    [bundle] = (folder / "report" / "bundles").iterdir()
    (tmp_path / "junk.tar.gz").write_bytes(b"not a bundle")
    assert main(["replay", str(tmp_path / "junk.tar.gz")]) == 2

    def other_image(manifest):
        manifest["image"]["digest"] = "0" * 64
    assert main(["replay", str(_rewritten(bundle, tmp_path / "i.tar.gz", other_image))]) == 2
    err = capsys.readouterr().err
    assert "not a readable .tar.gz bundle" in err
    assert "was recorded on image debian12-cloud 000000000000" in err
