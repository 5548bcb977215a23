"""JUnit XML of a run, the format every CI engine shows: one ``testsuite`` per
guest config, one ``testcase`` per scenario (classname ``wdfhil.<guest>``),
FAIL as ``failure`` and ERROR (the platform broke) as ``error``, each with the
whole explanation as its text. Valid against the Apache Ant JUnit schema
(tests/unit/reports/JUnit.xsd).
"""

from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.scenario_result import ScenarioResult


def _clean(text: str) -> str:
    """XML 1.0 cannot carry most control characters (a console log may)."""
    return "".join(c if c in "\t\n\r" or ord(c) >= 0x20 else f"\\x{ord(c):02x}" for c in text)


def junit_xml(results: list["ScenarioResult"], *, name: str = "wdfhil") -> str:
    root = ET.Element("testsuites")
    by_guest: dict[str, list["ScenarioResult"]] = {}
    for result in results:
        by_guest.setdefault(result.guest, []).append(result)
    host = socket.gethostname() or "localhost"
    for index, (guest, items) in enumerate(by_guest.items()):
        started = min((r.evidence.started for r in items if r.evidence is not None),
                      default=time.time())
        suite = ET.SubElement(root, "testsuite", {
            "name": f"{name}.{guest}", "package": name, "id": str(index),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
            "hostname": host, "tests": str(len(items)),
            "failures": str(sum(r.verdict == "FAIL" for r in items)),
            "errors": str(sum(r.verdict == "ERROR" for r in items)),
            "time": f"{sum(r.seconds for r in items):.3f}"})
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", {"name": "guest", "value": guest})
        image = next((r.evidence.run.get("image", {}) for r in items
                      if r.evidence is not None and r.evidence.run.get("image")), {})
        if image:
            ET.SubElement(properties, "property", {"name": "image", "value": image["provenance"]})
        for result in items:
            case = ET.SubElement(suite, "testcase", {
                "name": result.scenario, "classname": f"{name}.{guest}",
                "time": f"{result.seconds:.3f}"})
            if result.verdict != "PASS":
                kind = "failure" if result.verdict == "FAIL" else "error"
                element = ET.SubElement(case, kind, {
                    "message": _clean(result.summary()),
                    "type": "ScenarioFailed" if kind == "failure" else "PlatformError"})
                element.text = _clean(result.explain())
        out = ET.SubElement(suite, "system-out")
        out.text = _clean("\n".join(f"{r.verdict} {r.scenario}: {r.summary()}" for r in items))
        ET.SubElement(suite, "system-err").text = ""
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: str | Path, results: list["ScenarioResult"]) -> Path:
    path = Path(path)
    path.write_text(junit_xml(results))
    return path
