"""The failing run most report tests look at (tests/unit/reports/report_runs.py)."""

from __future__ import annotations

import pytest

from report_runs import REQUEST_AFTER_COMPLETION, recorded_run, stale_write_into  # noqa: F401


@pytest.fixture
def failing_result(tmp_path):
    """The request-after-completion bug with no expectation (FAIL), and a stale
    device write into the request's buffer recorded by the device trace."""
    return recorded_run(tmp_path, REQUEST_AFTER_COMPLETION, during=stale_write_into("req"))
