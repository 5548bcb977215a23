"""Reproduction bundles: what goes in, what a bad one says, and how replay
decides whether a rerun reproduced the recorded failure."""

from __future__ import annotations

import copy
import io
import json
import tarfile

import pytest

from orchestrator.bundle import MANIFEST, open_bundle, write_bundle
from orchestrator.guest_config import load_guest_config
from orchestrator.replay_command import compare
from orchestrator.scenario import load_scenario
from wdfhil.errors import ConfigError


def test_a_bundle_holds_everything_to_rerun_and_read_the_failure(failing_result, tmp_path):
    path = write_bundle(failing_result, tmp_path / "bundles")
    assert path.stat().st_mode & 0o777 == 0o600
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
    assert {"manifest.json", "result.json", "scenario/fx.scenario.yaml",
            "guest/pc-256m.yaml", "qemu-cmdline.txt", "qemu.log", "console.log",
            "trace.jsonl", "pool-map.json", "pool-window.bin"} <= names
    manifest = open_bundle(path, tmp_path / "out")
    assert manifest["verdict"] == "FAIL"
    assert manifest["image"]["digest"] == "ab" * 32
    assert manifest["image"]["packages"] == {"busybox": "1:1.35"}
    assert manifest["seeds"] == {"faults": 0, "steps": {"0": 5}}
    assert [f["rule"] for f in manifest["findings"]] == ["MemAfterReqCompletedWriteA",
                                                         "ParentObjectCheck"]
    out = tmp_path / "out"
    # The scenario and the guest config load back as they ran.
    assert load_scenario(out / manifest["scenario_file"]).name == "fx"
    guest = load_guest_config("pc-256m", [str(out / "guest")])
    assert (guest.memory, guest.pool.base) == (96 << 20, 32 << 20)
    pool = json.loads((out / "pool-map.json").read_text())
    dump = (out / "pool-window.bin").read_bytes()
    assert len(dump) == pool["dump"]["length"]
    assert [json.loads(line)["type"] for line in (out / "trace.jsonl").read_text().splitlines()] \
        == ["dma", "completion", "interrupt"]


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("members, words", [
    ({"x.txt": b"1"}, "no readable manifest.json"),
    ({MANIFEST: b"{}"}, "is not a wdfhil-bundle/1 manifest"),
    ({MANIFEST: json.dumps({"format": "wdfhil-bundle/1"}).encode()}, "lacks 'scenario_file'"),
    ({MANIFEST: json.dumps({"format": "wdfhil-bundle/1", "scenario_file": "scenario/a.yaml",
                            "guest_file": "guest/g.yaml", "guest": "g", "image": {}}).encode()},
     "lacks scenario/a.yaml"),
    ({"../escape.txt": b"x", MANIFEST: b"{}"}, "not a readable .tar.gz bundle"),
])
def test_a_bad_bundle_says_why(tmp_path, members, words):
    path = _tar(tmp_path / "bad.tar.gz", members)
    with pytest.raises(ConfigError, match=words.replace(".", r"\.").replace("'", ".")):
        open_bundle(path, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_not_a_tarball_is_a_bad_bundle(tmp_path):
    (tmp_path / "b.tar.gz").write_text("hello")
    with pytest.raises(ConfigError, match="not a readable"):
        open_bundle(tmp_path / "b.tar.gz", tmp_path / "out")
    with pytest.raises(ConfigError, match="no such bundle"):
        open_bundle(tmp_path / "missing.tar.gz", tmp_path / "out")


def test_replay_compares_findings_steps_faults_and_verdict(failing_result, tmp_path):
    manifest = open_bundle(write_bundle(failing_result, tmp_path), tmp_path / "out")
    assert compare(manifest, failing_result) == []
    other = copy.deepcopy(failing_result)
    other.evidence.findings = other.evidence.findings[:1]
    differences = compare(manifest, other)
    assert len(differences) == 1 and differences[0].startswith("findings: now ")
    assert "ParentObjectCheck [warning] on spare at fx.scenario.yaml:7" in differences[0]
    other.verdict, other.faults = "PASS", {"stale_dma": 1}
    assert {d.split(" ")[0] for d in compare(manifest, other)} == {"verdict", "findings:",
                                                                     "faults:"}
