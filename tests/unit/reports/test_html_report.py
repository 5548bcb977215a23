"""The HTML report in a real headless browser: the SVGs render, with the
elements the run had, the findings are listed, and the file needs nothing
from anywhere else."""

from __future__ import annotations

import re

from orchestrator.evidence import Evidence
from orchestrator.report_html import write_html
from orchestrator.scenario_result import ScenarioResult

from report_browser import check_report_page, headless_chromium
from report_runs import REQUEST_AFTER_COMPLETION, buggy_driver_finding, recorded_run


def test_the_report_renders_timeline_pool_map_and_findings(failing_result, tmp_path):
    (tmp_path / "p").mkdir()
    passing = recorded_run(tmp_path / "p", REQUEST_AFTER_COMPLETION + (
        "expect:\n  ignore_warnings: true\n  findings:\n"
        "    - {rule: MemAfterReqCompletedWriteA, object: in}\n"))
    no_evidence = ScenarioResult("old", "o.scenario.yaml", "pc-256m", "FAIL",
                                 problems=["o.scenario.yaml:3: verify: differs"],
                                 findings=["[error] SomeRule at o.scenario.yaml:4: text"])
    overrun = ScenarioResult("bug-overrun", "b.scenario.yaml", "pc-256m", "PASS", evidence=Evidence(
        started=0.0, ended=0.1, findings=[buggy_driver_finding("OverrunDriver", 674)]))
    page = write_html(tmp_path / "report.html", [failing_result, passing, no_evidence, overrun],
                      header="image debian12-cloud abababababab")
    text = page.read_text()
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", text)   # no external resource
    assert "<script" not in text
    with headless_chromium() as driver:
        counts = check_report_page(driver, page)
        assert counts["section.scenario"] == 4
        assert counts["svg.timeline"] == 3 and counts["svg.poolmap"] == 3
        assert counts["svg.timeline .ev-step"] == 2 * len(failing_result.steps)
        assert counts["svg.timeline .ev-dma"] == 1          # the stale write of the fixture
        assert counts["svg.timeline .ev-interrupt"] == 1
        assert counts["svg.timeline .ev-finding"] == 2 + 2 + 1    # the overrun's bug check
        assert counts["svg.poolmap .transfer.offending"] >= 1
        assert counts["svg.poolmap .zoom-transfer.offending"] == 1
        assert counts["svg.poolmap .redzone"] >= 2           # header and slack of req
        findings = [e.text for e in driver.find_elements("css selector", "#s0 li.finding")]
        assert findings[0].startswith("[error] MemAfterReqCompletedWriteA on in at "
                                      "fx.scenario.yaml:6")
        assert "request completed at fx.scenario.yaml:5" in findings[0]
        assert driver.find_element("css selector", "#s2 li.finding").text.startswith(
            "[error] SomeRule")
        why = driver.find_element("css selector", "#s0 ul.offences li").text
        assert "touches req after it was freed" in why
        assert driver.find_element("id", "totals").text.startswith("2 passed, 2 failed")
        # the driver's CPU overrun (a pool map without pool): mapping, guard page, the write
        assert (counts["svg.poolmap .cpu-object"], counts["svg.poolmap .cpu-redzone"],
                counts["svg.poolmap .cpu-access.offending"]) == (1, 1, 1)
        assert driver.find_element("css selector", "#s3 ul.offences li.cpu").text.endswith(
            "into its guard page")


def test_without_a_browser_ci_fails_where_a_desk_skips(monkeypatch, tmp_path):
    import pytest

    import report_browser

    monkeypatch.setattr(report_browser, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needs a browser in CI"):
        report_browser.need_browser()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no-chromium not installed"):
        report_browser.need_browser()
