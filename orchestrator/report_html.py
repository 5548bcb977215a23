"""The run's report as one self-contained HTML file: inline CSS and SVG, no
script, font or image from anywhere else, so it opens from a CI artifact or
a mail attachment with no network.

Per scenario: the verdict and its problems, the steps, the findings with
their history and file:line, an SVG timeline (steps, device requests and
completions, DMA transfers, interrupts, refusals, injected faults, findings on
one wall clock) and an SVG map of the pool window. The pool window is tens of
MiB and a scenario's objects are bytes, so the map draws only the pages the
run touched, one row a page (4 KiB across): objects, the pool header and
slack around each (where a touch is an overrun: the redzones of this pool),
and each device transfer into the window, the offending ones outlined. An
offending CPU access of the driver (a finding's ``access``: an overrun into a
mapping's guard page, a buffer touched after its request completed) gets a
byte-scale row of its own, drawn the same way: the object, its redzone, and
where the access went, outlined; also on the page rows when it hit the window.
"""

from __future__ import annotations

import collections
import html
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.evidence import PAGE, format_site_json

if TYPE_CHECKING:
    from orchestrator.scenario_result import ScenarioResult

MAX_PAGE_ROWS = 48
TIMELINE_WIDTH = 960
LABEL_W = 110
LANES = ("steps", "requests", "dma", "interrupts", "faults", "findings")
LANE_TITLES = {"steps": "steps", "requests": "requests", "dma": "DMA", "interrupts": "interrupts",
               "faults": "faults / refusals", "findings": "findings"}

CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em;color:#1d2330}
h1{font-size:1.5em;margin:0 0 .3em} h2{font-size:1.2em;margin:1.6em 0 .4em}
h3{font-size:1em;margin:1em 0 .3em} code,pre,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
table{border-collapse:collapse;margin:.3em 0} td,th{border:1px solid #d5d9e0;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f1f3f6} .PASS{color:#fff;background:#2d8a4e} .FAIL{color:#fff;background:#c62828}
.ERROR{color:#fff;background:#8e24aa} .verdict{padding:1px 6px;border-radius:3px;font-weight:600}
section.scenario{border-top:2px solid #d5d9e0;margin-top:1.5em}
ul.findings{list-style:none;padding:0} li.finding{border-left:4px solid #c62828;padding:4px 8px;margin:6px 0;background:#fff5f5}
li.finding.warning{border-color:#f9a825;background:#fffbea} .history{margin:2px 0 0 1em;color:#444}
.problem{color:#c62828} .muted{color:#667} svg{display:block;margin:.4em 0;background:#fafbfc;border:1px solid #e1e4ea}
svg text{font:11px system-ui,sans-serif;fill:#333} .legend span{display:inline-block;margin-right:1em}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
"""

COLORS = {"step": "#90a4ae", "step-failed": "#c62828", "to_device": "#1e88e5",
          "to_guest": "#43a047", "interrupt": "#6d4c41", "fault": "#fb8c00", "refused": "#8e24aa",
          "completion": "#546e7a", "finding": "#c62828", "alloc": "#64b5f6", "freed": "#cfd8dc",
          "header": "#ef9a9a", "slack": "#ffe0b2", "transfer": "#2e7d32", "offending": "#d50000",
          "finding-object": "#6a1b9a", "leaked": "#1565c0", "guard": "#ef9a9a"}


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# -- the whole page --------------------------------------------------------------------------
def render_report(results: list["ScenarioResult"], *, header: str = "",
                  title: str = "wdfhil report") -> str:
    counts = collections.Counter(r.verdict for r in results)
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>"]
    if header:
        parts.append("".join(f"<div class='muted mono'>{esc(line)}</div>"
                             for line in header.splitlines()))
    parts.append(f"<p id='totals'>{counts['PASS']} passed, {counts['FAIL'] + counts['ERROR']} "
                 f"failed ({len(results)} scenario runs), made "
                 f"{esc(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}</p>")
    parts.append("<table id='summary'><tr><th>verdict</th><th>scenario</th><th>guest</th>"
                 "<th>seconds</th><th>summary</th></tr>")
    for number, r in enumerate(results):
        parts.append(f"<tr><td><span class='verdict {esc(r.verdict)}'>{esc(r.verdict)}</span></td>"
                     f"<td><a href='#s{number}'>{esc(r.scenario)}</a></td><td>{esc(r.guest)}</td>"
                     f"<td>{r.seconds:.2f}</td><td>{esc(r.summary())}</td></tr>")
    parts.append("</table>")
    parts += [scenario_section(number, r) for number, r in enumerate(results)]
    parts.append("</body></html>\n")
    return "".join(parts)


def scenario_section(number: int, r: "ScenarioResult") -> str:
    ev = r.evidence
    out = [f"<section class='scenario' id='s{number}' data-verdict='{esc(r.verdict)}'>",
           f"<h2><span class='verdict {esc(r.verdict)}'>{esc(r.verdict)}</span> "
           f"{esc(r.scenario)} on {esc(r.guest)}</h2>",
           f"<div class='muted mono'>{esc(r.path)} &middot; {r.seconds:.2f} s"
           + (f" (boot {r.boot_seconds:.1f} s)" if r.boot_seconds else "") + "</div>"]
    if ev is not None and ev.run.get("image"):
        out.append(f"<div class='muted mono'>{esc(ev.run['image'].get('provenance', ''))}"
                   f" &middot; {esc(ev.run.get('accelerator') or '')}</div>")
    if ev is not None and ev.run.get("error"):
        out.append(f"<p class='problem'>{esc(ev.run['error'])}</p>")
    if r.problems:
        out.append("<ul class='problems'>" + "".join(f"<li class='problem'>{esc(p)}</li>"
                                                       for p in r.problems) + "</ul>")
    out.append(steps_table(r))
    out.append(findings_list(r))
    if ev is not None:
        out.append("<h3>Timeline</h3>" + timeline_svg(number, r) + timeline_legend())
        out.append("<h3>Pool window</h3>" + pool_svg(number, ev.pool, ev.findings))
        if ev.events_dropped:
            out.append(f"<p class='muted'>{ev.events_dropped} more device records not shown</p>")
    if r.notes:
        out.append("<details><summary>notes</summary><pre>" + esc("\n".join(r.notes))
                   + "</pre></details>")
    out.append("</section>")
    return "".join(out)


def steps_table(r: "ScenarioResult") -> str:
    rows = "".join(f"<tr class='{'ok' if s.ok else 'failed'}'><td>{s.index}</td><td>{esc(s.kind)}</td>"
                   f"<td>{s.line}</td><td>{'ok' if s.ok else '<b class=problem>FAIL</b>'}</td>"
                   f"<td>{s.seconds:.3f}</td><td>{esc(s.detail)}</td></tr>" for s in r.steps)
    return ("<h3>Steps</h3><table class='steps'><tr><th>#</th><th>step</th><th>line</th><th></th>"
            f"<th>s</th><th>detail</th></tr>{rows}</table>")


def findings_list(r: "ScenarioResult") -> str:
    records = r.evidence.findings if r.evidence is not None else []
    if not records and not r.findings:
        return "<h3>Findings</h3><p class='muted'>none</p>"
    items = []
    if records:
        for f in records:
            obj = f.get("object") or {}
            what = obj.get("name") or obj.get("kind") or ""
            history = "".join(f"<div class='history mono'>{esc(h['event'])} at "
                              f"{esc(format_site_json(h.get('site')))}</div>"
                              for h in f.get("history", []))
            count = f" (seen {f['count']} times)" if f.get("count", 1) > 1 else ""
            items.append(f"<li class='finding {esc(f['severity'])}' data-rule='{esc(f['rule'])}'>"
                         f"<b>[{esc(f['severity'])}] {esc(f['rule'])}</b>"
                         + (f" on <code>{esc(what)}</code>" if what else "")
                         + f" at <code class='site'>{esc(format_site_json(f.get('site')))}</code>"
                         f"{count}<div>{esc(f['message'])}</div>{history}</li>")
    else:        # results from before evidence: the strings the table had
        items = [f"<li class='finding'>{esc(text)}</li>" for text in r.findings]
    return "<h3>Findings</h3><ul class='findings'>" + "".join(items) + "</ul>"


# -- the timeline ----------------------------------------------------------------------------
def _lane_items(r: "ScenarioResult") -> list[tuple[str, float, float, str, str]]:
    """(lane, start s, end s, css class, tooltip) for everything with a time."""
    ev = r.evidence
    items: list[tuple[str, float, float, str, str]] = []
    step_at_line: dict[int, float] = {}
    for s in r.steps:
        start = (s.started or ev.started) - ev.started
        step_at_line.setdefault(s.line, start + s.seconds)
        items.append(("steps", start, start + s.seconds, "ev-step" + ("" if s.ok else " failed"),
                      f"step {s.index} {s.kind} (line {s.line}): {s.detail}"))
    for e in ev.events:
        t, kind = e.get("t", 0.0), e.get("type")
        if kind == "dma":
            fault = f" fault {e['fault']}" if e.get("fault") else ""
            items.append(("dma", t, t, f"ev-dma {e.get('direction', '')}",
                          f"DMA {e.get('opcode')} request {e.get('request_id'):#x} "
                          f"{e.get('direction')} {e.get('length')} bytes{fault} "
                          f"{_ranges(e.get('ranges', []))}"))
        elif kind in ("completion", "io_completion", "io_request"):
            items.append(("requests", t, t, "ev-request " + kind,
                          f"{kind} request {e.get('request_id', 0):#x} "
                          f"{e.get('status', e.get('major', ''))}"))
        elif kind == "interrupt":
            items.append(("interrupts", t, t, "ev-interrupt", f"interrupt vector {e.get('vector')}"))
        elif kind == "fault":
            items.append(("faults", t, t, "ev-fault", f"fault {e.get('kind')} on request "
                          f"{e.get('request_id', 0):#x}"))
        elif kind == "refused":
            items.append(("faults", t, t, "ev-refused", f"refused request "
                          f"{e.get('request_id', 0):#x}: {e.get('reason')} {e.get('message', '')}"))
    for f in ev.findings:
        line = (f.get("site") or {}).get("line")
        t = step_at_line.get(line, ev.ended - ev.started)
        items.append(("findings", t, t, "ev-finding", f"[{f['severity']}] {f['rule']} at "
                      f"{format_site_json(f.get('site'))}: {f['message']}"))
    return items


def _ranges(ranges: list[list[int]]) -> str:
    return ", ".join(f"{gpa:#x}+{n:#x}" for gpa, n in ranges[:4]) + (" ..." if len(ranges) > 4 else "")


def timeline_svg(number: int, r: "ScenarioResult") -> str:
    ev = r.evidence
    items = _lane_items(r)
    span = max([ev.ended - ev.started] + [end for _l, _s, end, _c, _t in items] + [1e-3])
    lane_h, top = 22, 18
    height = top + lane_h * len(LANES) + 20
    plot_w = TIMELINE_WIDTH - LABEL_W - 10

    def x(t: float) -> float:
        return LABEL_W + max(0.0, t) / span * plot_w

    out = [f"<svg class='timeline' id='timeline-{number}' xmlns='http://www.w3.org/2000/svg' "
           f"width='{TIMELINE_WIDTH}' height='{height}' viewBox='0 0 {TIMELINE_WIDTH} {height}' "
           f"role='img' aria-label='timeline of {esc(r.scenario)}'>"]
    for i, lane in enumerate(LANES):
        y = top + i * lane_h
        out.append(f"<text x='4' y='{y + 15}'>{esc(LANE_TITLES[lane])}</text>"
                   f"<line x1='{LABEL_W}' x2='{TIMELINE_WIDTH - 10}' y1='{y + lane_h}' "
                   f"y2='{y + lane_h}' stroke='#e1e4ea'/>")
    for tick in range(6):                       # a time axis: 0 .. span in five steps
        t = span * tick / 5
        label = f"{t * 1000:.1f}ms" if span < 1 else f"{t:.2f}s"
        anchor = "start" if tick == 0 else ("end" if tick == 5 else "middle")
        out.append(f"<text class='tick' x='{x(t):.1f}' y='12' text-anchor='{anchor}'>{label}</text>"
                   f"<line x1='{x(t):.1f}' x2='{x(t):.1f}' y1='14' y2='{height - 18}' "
                   f"stroke='#eef0f3'/>")
    for lane, start, end, css, tip in items:
        y = top + LANES.index(lane) * lane_h
        body = f"<title>{esc(tip)}</title>"
        if lane == "steps":
            width = max(2.0, x(end) - x(start))
            color = COLORS["step-failed"] if "failed" in css else COLORS["step"]
            out.append(f"<rect class='{css}' x='{x(start):.1f}' y='{y + 4}' width='{width:.1f}' "
                       f"height='{lane_h - 8}' fill='{color}'>{body}</rect>")
        elif lane == "dma":
            color = COLORS["to_guest"] if "to_guest" in css else COLORS["to_device"]
            out.append(f"<rect class='{css}' x='{x(start) - 1.5:.1f}' y='{y + 3}' width='3' "
                       f"height='{lane_h - 6}' fill='{color}'>{body}</rect>")
        elif lane in ("requests", "interrupts"):
            color = COLORS["interrupt"] if lane == "interrupts" else COLORS["completion"]
            out.append(f"<rect class='{css}' x='{x(start) - 1:.1f}' y='{y + 4}' width='2' "
                       f"height='{lane_h - 8}' fill='{color}'>{body}</rect>")
        else:                                    # faults, refusals, findings: a diamond
            color = COLORS["refused"] if "refused" in css else (
                COLORS["fault"] if lane == "faults" else COLORS["finding"])
            cx, cy = x(start), y + lane_h / 2
            out.append(f"<polygon class='{css}' points='{cx:.1f},{cy - 7} {cx + 7:.1f},{cy} "
                       f"{cx:.1f},{cy + 7} {cx - 7:.1f},{cy}' fill='{color}'>{body}</polygon>")
    out.append("</svg>")
    return "".join(out)


def timeline_legend() -> str:
    keys = [("step", "step"), ("step-failed", "failed step"), ("to_device", "DMA to device"),
            ("to_guest", "DMA to guest"), ("completion", "completion"),
            ("interrupt", "interrupt"), ("fault", "injected fault"), ("refused", "refusal"),
            ("finding", "finding")]
    return "<div class='legend'>" + "".join(
        f"<span><i class='sw' style='background:{COLORS[k]}'></i>{esc(label)}</span>"
        for k, label in keys) + "</div>"


# -- the pool map ----------------------------------------------------------------------------
def _pages_of(start: int, length: int) -> range:
    return range(start // PAGE, (start + max(length, 1) - 1) // PAGE + 1)


def _zooms(allocations: list[dict[str, Any]], transfers: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Byte ranges worth a close-up: each offending transfer with the objects
    around it, else each object a finding is about (three at most)."""
    def around(start: int, end: int) -> tuple[int, int]:
        for a in allocations:
            zone_start = a["header"][0] if a["header"] else a["gpa"]
            zone_end = a["slack"][0] + a["slack"][1]
            if zone_start < end + 16 and start - 16 < zone_end and zone_end - zone_start <= 512:
                start, end = min(start, zone_start), max(end, zone_end)
        start, end = start - 16, end + 16
        if end - start < 64:
            start, end = start - (64 - (end - start)) // 2, start + 64
        return start, end

    spots = [around(gpa, gpa + n) for t in transfers if t["offending"] for gpa, n in t["ranges"]]
    if not spots:
        spots = [around(a["gpa"], a["gpa"] + a["size"]) for a in allocations
                 if a.get("findings") and a["size"] <= 512]
    if not spots:                 # still allocated at the end: a leak, if the driver unloaded
        spots = [around(a["gpa"], a["gpa"] + a["size"]) for a in allocations
                 if a["freed"] is None and a["size"] <= 512]
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spots):               # overlapping close-ups become one
        if merged and start <= merged[-1][1] and end - merged[-1][0] <= 1024:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged[:3]


_VERBS = {True: "write", False: "read", None: "access"}


def _accesses(findings: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(finding, its access) for each finding that records an offending CPU access."""
    return [(f, f["access"]) for f in findings if f.get("access")]


def _outside(access: dict[str, Any]) -> list[tuple[int, int]]:
    """The byte ranges of an access that are not its object's to touch: past either
    end of it, or all of it when the object was no longer the driver's (a completed
    request's buffer, an unmapped range)."""
    start, end = access["address"], access["address"] + max(access["length"], 1)
    obj = access["object"]
    if "(completed)" in obj["what"] or "(unmapped)" in obj["what"]:
        return [(start, end)]
    pieces = [(start, min(end, obj["start"])), (max(start, obj["end"]), end)]
    return [(lo, hi) for lo, hi in pieces if lo < hi]


def _describe_access(finding: dict[str, Any], access: dict[str, Any]) -> str:
    """One line: what the driver did, where, and how it went wrong."""
    verb = _VERBS[access["write"]]
    obj, zone = access["object"], access.get("redzone")
    text = (f"CPU {verb} of {access['length']} bytes at {access['address']:#x} "
            f"({finding['rule']} at {format_site_json(finding.get('site'))})")
    past = access["address"] + access["length"] - obj["end"]
    if zone and past > 0:
        text += f": {past} bytes past the end of the {obj['what']}, into its {zone['what']}"
    elif "(completed)" in obj["what"] or "(unmapped)" in obj["what"]:
        text += f": into the {obj['what']}"
    return text


def pool_svg(number: int, pool: dict[str, Any] | None,
             findings: list[dict[str, Any]] | None = None) -> str:
    accesses = _accesses(findings or [])
    if not pool and not accesses:
        return "<p class='muted'>no framework pool activity in this scenario</p>"
    if not pool:            # a driver that used no pool: its bad access alone
        pool = {"base": 0, "size": 0, "allocations": [], "transfers": [], "none": True}
    allocations, transfers = pool["allocations"], pool["transfers"]
    pages: set[int] = set()
    for a in allocations:
        pages.update(_pages_of(a["gpa"], a["size"]))
        if a["header"]:
            pages.update(_pages_of(*a["header"]))
    for t in transfers:
        for gpa, n in t["ranges"]:
            pages.update(_pages_of(gpa, n))
    for _finding, access in accesses:      # a CPU access that went into the window
        gpa = access.get("gpa")
        if gpa is not None and pool["base"] <= gpa < pool["base"] + pool["size"]:
            pages.update(_pages_of(gpa, access["length"]))
    ordered = sorted(pages)
    shown, hidden = ordered[:MAX_PAGE_ROWS], max(0, len(ordered) - MAX_PAGE_ROWS)
    zooms = _zooms(allocations, transfers)
    row_h, top, left = 26, 34, 120
    width = TIMELINE_WIDTH
    plot_w = width - left - 10
    zoom_top = top + row_h * max(1, len(shown)) + 8
    access_top = zoom_top + (row_h + 14) * len(zooms)
    height = access_top + (row_h + 30) * len(accesses) + 16
    row_of = {page: i for i, page in enumerate(shown)}
    base, size = pool["base"], pool["size"]
    out = [f"<svg class='poolmap' id='poolmap-{number}' xmlns='http://www.w3.org/2000/svg' "
           f"width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
           f"aria-label='pool window map'>"]
    # The whole window as one bar, the drawn pages marked on it.
    if not pool.get("none"):
        out.append(f"<rect class='window' x='{left}' y='4' width='{plot_w}' height='10' "
                   f"fill='#eceff1'><title>pool window {base:#x}-{base + size:#x} "
                   f"({size >> 20} MiB)</title></rect><text x='4' y='13'>window</text>")
    for page in shown:
        px = left + (page * PAGE - base) / size * plot_w
        out.append(f"<rect class='window-page' x='{px:.1f}' y='4' width='2' height='10' "
                   f"fill='#1e88e5'/>")

    def spans(gpa: int, length: int):
        """(row, x, width) pieces of a byte range, one per drawn page it covers."""
        for page in _pages_of(gpa, length):
            if page not in row_of:
                continue
            lo, hi = max(gpa, page * PAGE), min(gpa + max(length, 1), (page + 1) * PAGE)
            yield (row_of[page], left + (lo - page * PAGE) / PAGE * plot_w,
                   max(1.5, (hi - lo) / PAGE * plot_w))

    def outline(css: str, gpa: int, length: int, color: str, width: float, tip: str) -> None:
        """An outline over the page rows a byte range covers: a transfer, a CPU access."""
        for row, px, w in spans(gpa, length):
            y = top + row * row_h
            out.append(f"<rect class='{css}' x='{px:.1f}' y='{y + 1}' width='{w:.1f}' "
                       f"height='{row_h - 2}' fill='none' stroke='{color}' "
                       f"stroke-width='{width}'><title>{esc(tip)}</title></rect>")

    for page, row in row_of.items():
        y = top + row * row_h
        out.append(f"<text x='4' y='{y + 16}' class='mono'>{page * PAGE:#x}</text>"
                   f"<rect class='page' x='{left}' y='{y + 2}' width='{plot_w}' "
                   f"height='{row_h - 4}' fill='#ffffff' stroke='#cfd8dc'/>")
    for a in allocations:
        label = a["name"] or a["tag"]
        state = "freed" if a["freed"] is not None else "live"
        tip = (f"{label}: {a['size']} bytes at {a['gpa']:#x}, tag {a['tag']}, allocated at "
               f"{format_site_json(a['site'])} (t={a['allocated']:.3f}s)"
               + (f", freed t={a['freed']:.3f}s" if a["freed"] is not None else ", live at the end"))
        css = "alloc" + (" finding" if a.get("findings") else "") + f" {state}"
        fill = COLORS["leaked"] if state == "live" else COLORS["alloc"]
        for row, px, w in spans(a["gpa"], a["size"]):
            y = top + row * row_h
            stroke = (f" stroke='{COLORS['finding-object']}' stroke-width='2' "
                      f"stroke-dasharray='4 2'" if a.get("findings") else "")
            out.append(f"<rect class='{css}' x='{px:.1f}' y='{y + 4}' width='{w:.1f}' "
                       f"height='{row_h - 8}' fill='{fill}' fill-opacity="
                       f"'{0.6 if state == 'freed' else 0.9}'{stroke}><title>{esc(tip)}</title></rect>")
            if w > 40:
                out.append(f"<text x='{px + 3:.1f}' y='{y + 17}'>{esc(label)}</text>")
        for key in ("header", "slack"):
            zone = a.get(key)
            if zone and zone[1] > 0:
                for row, px, w in spans(*zone):
                    y = top + row * row_h
                    out.append(f"<rect class='redzone {key}' x='{px:.1f}' y='{y + 4}' "
                               f"width='{w:.1f}' height='{row_h - 8}' fill='{COLORS[key]}'>"
                               f"<title>{esc(key)} of {esc(label)}: {zone[1]} bytes at "
                               f"{zone[0]:#x} (not the caller's)</title></rect>")
    for t in transfers:
        css = "transfer" + (" offending" if t["offending"] else "")
        color = COLORS["offending" if t["offending"] else "transfer"]
        tip = (f"{t['type']} request {t['request_id'] or 0:#x} {t.get('direction') or ''} "
               f"at t={t['t']:.3f}s: {_ranges(t['ranges'])}" + (f" - {t['why']}" if t["why"] else ""))
        for gpa, n in t["ranges"]:
            outline(css, gpa, n, color, 3 if t["offending"] else 1.5, tip)
    # Byte-scale close-ups: an 8-byte object is a sliver of a 4 KiB row.
    for i, (lo, hi) in enumerate(zooms):
        y = zoom_top + i * (row_h + 14)
        scale = plot_w / (hi - lo)

        def zx(gpa: int) -> float:
            return left + (min(max(gpa, lo), hi) - lo) * scale

        out.append(f"<text x='4' y='{y + 12}' class='mono'>{lo:#x}</text>"
                   f"<text x='4' y='{y + 24}'>close-up</text>"
                   f"<rect class='zoom' x='{left}' y='{y + 2}' width='{plot_w}' height='{row_h}' "
                   f"fill='#ffffff' stroke='#90a4ae'/>"
                   f"<text x='{left + plot_w - 60}' y='{y + row_h + 12}'>{hi - lo} bytes</text>")
        for a in allocations:
            label = a["name"] or a["tag"]
            pieces = [("alloc", a["gpa"], a["size"])] + [
                (key, *a[key]) for key in ("header", "slack") if a.get(key) and a[key][1] > 0]
            for key, gpa, length in pieces:
                if gpa + length <= lo or gpa >= hi:
                    continue
                fill = COLORS["leaked" if key == "alloc" and a["freed"] is None else key]
                css = "zoom-alloc" if key == "alloc" else f"zoom-redzone {key}"
                out.append(f"<rect class='{css}' x='{zx(gpa):.1f}' y='{y + 6}' "
                           f"width='{max(1.0, zx(gpa + length) - zx(gpa)):.1f}' "
                           f"height='{row_h - 8}' fill='{fill}'><title>{esc(key)} of "
                           f"{esc(label)}: {length} bytes at {gpa:#x}</title></rect>")
                if key == "alloc" and zx(gpa + length) - zx(gpa) > 30:
                    out.append(f"<text x='{zx(gpa) + 3:.1f}' y='{y + 19}'>{esc(label)}</text>")
        for t in transfers:
            color = COLORS["offending" if t["offending"] else "transfer"]
            for gpa, n in t["ranges"]:
                if gpa + n <= lo or gpa >= hi:
                    continue
                out.append(f"<rect class='zoom-transfer{' offending' if t['offending'] else ''}' "
                           f"x='{zx(gpa):.1f}' y='{y}' width='{max(2.0, zx(gpa + n) - zx(gpa)):.1f}' "
                           f"height='{row_h + 4}' fill='none' stroke='{color}' stroke-width='3'>"
                           f"<title>{esc(t.get('why') or 'device transfer')}</title></rect>")
    # An offending CPU access: in the page rows when it went into the window ...
    for finding, access in accesses:
        gpa = access.get("gpa")
        if gpa is None:
            continue
        for lo, hi in _outside(access):
            outline("cpu-access offending", gpa + lo - access["address"], hi - lo,
                    COLORS["offending"], 3, _describe_access(finding, access))
    # ... and a byte-scale row of its own: the object, its redzone, the access.
    for i, (finding, access) in enumerate(accesses):
        out.append(_access_row(access_top + i * (row_h + 30), left, plot_w, row_h,
                               finding, access))
    out.append("</svg>")
    legend = [("alloc", "object (pool allocation)"),
              ("leaked", "object still allocated when the run ended"),
              ("finding-object", "object a finding is about (dashed)"),
              ("header", "pool header (redzone)"),
              ("slack", "slack (redzone)"), ("transfer", "device transfer"),
              ("offending", "offending transfer or CPU access")]
    if any(a.get("redzone") for _f, a in accesses):
        legend.append(("guard", "guard page after a mapping (redzone)"))
    note = f"<p class='muted'>{hidden} more pages not drawn</p>" if hidden else ""
    offending = [t for t in transfers if t["offending"]]
    items = [f"<li class='problem'>transfer at t={t['t']:.3f}s: {esc(t['why'])}</li>"
             for t in offending]
    items += [f"<li class='problem cpu'>{esc(_describe_access(f, a))}</li>" for f, a in accesses]
    why = ("<ul class='offences'>" + "".join(items) + "</ul>") if items else ""
    return "".join(out) + "<div class='legend'>" + "".join(
        f"<span><i class='sw' style='background:{COLORS[k]}'></i>{esc(label)}</span>"
        for k, label in legend) + "</div>" + note + why


def _access_row(y: float, left: int, plot_w: int, row_h: int, finding: dict[str, Any],
                access: dict[str, Any]) -> str:
    """One offending CPU access at byte scale: its object (a completed or unmapped
    one greyed), the redzone beyond it, the access outlined where it went wrong."""
    obj, zone = access["object"], access.get("redzone")
    a_start, a_end = access["address"], access["address"] + max(access["length"], 1)
    lo = min(a_start, obj["start"], *([zone["start"]] if zone else []))
    hi = max(a_end, obj["end"], *([zone["end"]] if zone else []))
    pad = max(16, (hi - lo) // 50)
    lo, hi = lo - pad, hi + pad
    scale = plot_w / (hi - lo)

    def x(address: int) -> float:
        return left + (min(max(address, lo), hi) - lo) * scale

    gone = "(completed)" in obj["what"] or "(unmapped)" in obj["what"]
    where = access.get("space") or ""
    out = [f"<g class='cpu-row'><text x='4' y='{y + 12}'>CPU access</text>"
           f"<text x='4' y='{y + 24}' class='muted'>{esc(where)}</text>"
           f"<rect class='zoom' x='{left}' y='{y + 2}' width='{plot_w}' height='{row_h}' "
           f"fill='#ffffff' stroke='#90a4ae'/>"]
    width = max(1.0, x(obj["end"]) - x(obj["start"]))
    out.append(f"<rect class='cpu-object{' gone' if gone else ''}' x='{x(obj['start']):.1f}' "
               f"y='{y + 6}' width='{width:.1f}' height='{row_h - 8}' "
               f"fill='{COLORS['freed' if gone else 'alloc']}'><title>{esc(obj['what'])}: "
               f"{obj['end'] - obj['start']} bytes at {obj['start']:#x} ({esc(where)})"
               f"</title></rect>")
    if width > 60:
        out.append(f"<text x='{x(obj['start']) + 3:.1f}' y='{y + 19}'>{esc(obj['what'])}</text>")
    if zone:
        out.append(f"<rect class='redzone cpu-redzone' x='{x(zone['start']):.1f}' y='{y + 6}' "
                   f"width='{max(1.0, x(zone['end']) - x(zone['start'])):.1f}' "
                   f"height='{row_h - 8}' fill='{COLORS['guard']}'><title>{esc(zone['what'])} "
                   f"of the {esc(obj['what'])}: {zone['end'] - zone['start']} bytes at "
                   f"{zone['start']:#x} (not the driver's)</title></rect>")
        if x(zone["end"]) - x(zone["start"]) > 60:
            out.append(f"<text x='{x(zone['start']) + 3:.1f}' y='{y + 19}'>"
                       f"{esc(zone['what'])}</text>")
    tip = esc(_describe_access(finding, access))
    out.append(f"<rect class='cpu-access' x='{x(a_start):.1f}' y='{y + 3}' "
               f"width='{max(2.0, x(a_end) - x(a_start)):.1f}' height='{row_h - 2}' fill='none' "
               f"stroke='{COLORS['transfer']}' stroke-width='1.5'><title>{tip}</title></rect>")
    for bad_lo, bad_hi in _outside(access):
        out.append(f"<rect class='cpu-access offending' x='{x(bad_lo):.1f}' y='{y}' "
                   f"width='{max(2.0, x(bad_hi) - x(bad_lo)):.1f}' height='{row_h + 4}' "
                   f"fill='none' stroke='{COLORS['offending']}' stroke-width='3'>"
                   f"<title>{tip}</title></rect>")
    verb = _VERBS[access["write"]]
    out.append(f"<text x='{left}' y='{y + row_h + 16}' class='mono'>{verb} {a_start:#x}"
               f"+{a_end - a_start:#x}; {esc(obj['what'])} {obj['start']:#x}-{obj['end']:#x}"
               f"</text></g>")
    return "".join(out)


def write_html(path: str | Path, results: list["ScenarioResult"], header: str = "") -> Path:
    path = Path(path)
    path.write_text(render_report(results, header=header), encoding="utf-8")
    return path
