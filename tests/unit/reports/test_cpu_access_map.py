"""An offending CPU access on the pool map, drawn like an offending transfer:
the object, its redzone and where the access went. The accesses are real: the
built-in scenarios' buggy drivers (orchestrator/scenarios/buggy_drivers.py)
run on an in-process guest, and their bug check's BadAccess goes through the
evidence's finding records into the SVG, which is parsed and measured."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from framework_emu import PAGE_SIZE
from orchestrator.report_html import pool_svg

from report_runs import buggy_driver_finding

SVG = "{http://www.w3.org/2000/svg}"
USER_OFFSET = 0x234          # where InProcessGuest puts a caller's buffer in its first page


def _rects(svg: str, css: str) -> list[dict[str, float]]:
    root = ET.fromstring(svg[:svg.index("</svg>") + 6])
    return [{k: float(r.get(k)) for k in ("x", "y", "width", "height")}
            for r in root.iter(f"{SVG}rect") if set(css.split()) <= set(r.get("class", "").split())]


@pytest.fixture(scope="module")
def overrun() -> dict:
    """OverrunDriver: a direct read of 674 bytes, written 674 + 4096 bytes."""
    return buggy_driver_finding("OverrunDriver", 674)


@pytest.fixture(scope="module")
def touched() -> dict:
    """TouchAfterCompleteDriver: a buffered read of 300 bytes, zeroed after completion."""
    return buggy_driver_finding("TouchAfterCompleteDriver", 300)


def test_the_overrun_records_the_whole_access_its_mapping_and_the_guard_page(overrun):
    access = overrun["access"]
    obj, zone = access["object"], access["redzone"]
    assert overrun["code"] == 0x50 and overrun["site"]["line"] == 52     # buggy_drivers.py:52
    assert overrun["site"]["file"].endswith("buggy_drivers.py")
    assert obj["what"].startswith("system mapping of MDL 0x")
    assert (access["address"], access["length"], access["write"]) == (
        obj["start"] + USER_OFFSET, 674 + PAGE_SIZE, True)
    assert obj["end"] - obj["start"] == PAGE_SIZE                         # one page mapped
    assert (zone["what"], zone["start"], zone["end"]) == ("guard page", obj["end"],
                                                         obj["end"] + PAGE_SIZE)
    assert (access["space"], access["gpa"]) == ("system-PTE space", None)


def test_the_touch_after_completion_records_the_completed_buffer(touched):
    access = touched["access"]
    assert touched["rule"] == "BugCheck" and touched["site"]["line"] == 24
    assert access["object"]["what"].endswith("(Read request) (completed)")
    assert (access["address"], access["length"]) == (access["object"]["start"], 300)
    assert access["object"]["end"] - access["object"]["start"] == 300
    assert access["redzone"] is None and access["space"] == "direct map"
    assert access["gpa"] == access["address"] - 0xFFFF_A000_0000_0000


def test_the_map_outlines_the_overrun_where_it_left_the_mapping(overrun):
    svg = pool_svg(0, None, [overrun])
    [obj] = _rects(svg, "cpu-object")
    [zone] = _rects(svg, "redzone cpu-redzone")
    [whole] = [r for r in _rects(svg, "cpu-access") if r not in _rects(svg, "offending")]
    [bad] = _rects(svg, "cpu-access offending")
    scale = obj["width"] / PAGE_SIZE                                   # px a byte
    assert zone["width"] == pytest.approx(obj["width"], abs=0.2)       # a page each
    assert zone["x"] == pytest.approx(obj["x"] + obj["width"], abs=0.2)
    assert whole["x"] == pytest.approx(obj["x"] + USER_OFFSET * scale, abs=0.2)
    assert bad["x"] == pytest.approx(zone["x"], abs=0.2)               # from the guard page on
    past = USER_OFFSET + 674                                           # bytes into it
    assert bad["width"] == pytest.approx(past * scale, abs=0.2)
    assert f"CPU write of {674 + PAGE_SIZE} bytes at {overrun['access']['address']:#x}" in svg
    assert f"{past} bytes past the end of the system mapping of MDL" in svg
    assert "into its guard page" in svg and "class='problem cpu'" in svg


def test_the_map_outlines_all_of_a_completed_buffers_access(touched):
    svg = pool_svg(0, None, [touched])
    [obj] = _rects(svg, "cpu-object gone")             # not the driver's any more: greyed
    [bad] = _rects(svg, "cpu-access offending")
    assert (bad["x"], bad["width"]) == pytest.approx((obj["x"], obj["width"]), abs=0.2)
    assert _rects(svg, "cpu-redzone") == []
    assert "into the buffer of WDFREQUEST" in svg


def test_an_access_into_the_pool_window_is_on_its_page_row_too(touched):
    """The same access, had its buffer been pool memory: outlined on the page's row."""
    base = touched["access"]["gpa"] & ~(PAGE_SIZE - 1)
    pool = {"base": base, "size": 16 * PAGE_SIZE, "allocations": [], "transfers": []}
    svg = pool_svg(0, pool, [touched])
    rows = _rects(svg, "page")
    on_rows = [r for r in _rects(svg, "cpu-access offending") if r["y"] < rows[-1]["y"] + 26]
    assert len(rows) == 1 and len(on_rows) == 1
    offset = touched["access"]["gpa"] - base
    assert on_rows[0]["x"] == pytest.approx(rows[0]["x"] + offset / PAGE_SIZE * rows[0]["width"],
                                            abs=0.2)


def test_no_pool_and_no_access_still_says_so():
    assert "no framework pool activity" in pool_svg(0, None, [])
