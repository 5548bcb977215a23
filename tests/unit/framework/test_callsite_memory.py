"""Call sites stay the driver's own file:line while they are remembered per instruction.

callsite.py remembers the site of an instruction offset with its code object;
these tests pin down that a remembered site is never handed to another line,
another code object, or a call that came through framework code.
"""

from __future__ import annotations

import _thread
import threading

import pytest

from framework_emu import PoolType, callsite
from framework_emu.bugcheck import BugCheck
from framework_emu.umdf1 import IWDFMemory

NONPAGED = PoolType.NonPagedPool


def _line_of(marker: str) -> int:
    """The line of this file holding ``marker`` (a comment at the end of a call)."""
    with open(__file__) as source:
        for number, text in enumerate(source, 1):
            if text.rstrip().endswith(marker) and "_line_of(" not in text:
                return number
    raise AssertionError(marker)


def test_a_call_site_repeated_in_a_loop_keeps_its_line(fx):
    sites = []
    for _ in range(5):
        _, mem, _ = fx.WdfMemoryCreate(None, NONPAGED, b"Loop", 32)  # loop-create
        sites.append(fx._live[mem].created_at)
        fx.WdfObjectDelete(mem)  # loop-delete
        sites.append(fx._handles.graveyard[mem].deleted_at)
    assert sites[0::2] == [(__file__, _line_of("# loop-create"))] * 5
    assert sites[1::2] == [(__file__, _line_of("# loop-delete"))] * 5


def test_calls_on_different_lines_of_one_function_each_get_their_own_line(fx):
    _, first, _ = fx.WdfMemoryCreate(None, NONPAGED, b"Two ", 32)  # first-line
    _, second, _ = fx.WdfMemoryCreate(None, NONPAGED, b"Two ", 32)  # second-line
    assert fx._live[first].created_at == (__file__, _line_of("# first-line"))
    assert fx._live[second].created_at == (__file__, _line_of("# second-line"))


def test_same_offset_in_another_code_object_of_the_same_file_gets_that_objects_line(fx):
    """Two drivers compiled from one file name, identical but for their first line,
    called in turn: the same instruction offset must never share a remembered site."""
    body = "def make(fx):\n    return fx.WdfMemoryCreate(None, 0, b'Same', 16)[1]\n"
    makers = []
    for padding in (0, 7):
        namespace: dict = {}
        exec(compile("\n" * padding + body, "/drivers/same_name.py", "exec"), namespace)
        makers.append((namespace["make"], padding + 2))
    for _ in range(3):
        for make, line in makers:
            assert fx._live[make(fx)].created_at == ("/drivers/same_name.py", line)


def test_a_call_made_through_framework_code_names_the_drivers_line(fx):
    """The UMDF 1 facade calls WdfObjectDelete itself: the deletion is the driver's call."""
    _, handle, _ = fx.WdfMemoryCreate(None, NONPAGED, b"Umdf", 64)
    IWDFMemory(fx, handle).DeleteWdfObject()  # facade-delete
    assert fx._handles.graveyard[handle].deleted_at == (__file__, _line_of("# facade-delete"))


def test_a_stale_handle_names_the_deletion_line_after_the_site_memory_starts_over(fx, monkeypatch):
    monkeypatch.setattr(callsite, "_SITE_MEMORY_LIMIT", 3)
    for _ in range(4):  # more distinct (code, offset) pairs than the memory keeps
        _, mem, _ = fx.WdfMemoryCreate(None, NONPAGED, b"Over", 16)
        fx.WdfObjectDelete(mem)  # overflow-delete
    assert len(callsite._sites) <= 3
    with pytest.raises(BugCheck) as stopped:
        fx.WdfMemoryGetBuffer(mem)
    assert f"deleted at {callsite.format_site((__file__, _line_of('# overflow-delete')))}" in str(stopped.value)


def test_caller_site_from_the_bottom_of_a_stack_walks_instead_of_failing():
    """An entry point started by C code with no Python frame under it (a raw thread):
    there is no frame two levels up, so caller_site walks from its own caller."""
    done = threading.Event()
    result = []

    def entry_point():
        result.append(callsite.caller_site())  # bottom-of-stack
        done.set()

    _thread.start_new_thread(entry_point, ())
    assert done.wait(60)
    assert result == [(__file__, _line_of("# bottom-of-stack"))]


def test_every_object_class_answers_to_wdfobject():
    """WdfObjectDelete takes any live handle as a WDFOBJECT without asking the object:
    the class statement itself refuses a kind that would not answer to FX_TYPE_OBJECT."""
    from framework_emu.objects import FX_TYPE_USEROBJECT, FxObject

    with pytest.raises(TypeError, match="FX_TYPE_OBJECT"):
        class NotAWdfObject(FxObject):
            QI_TYPES = frozenset({FX_TYPE_USEROBJECT})
