"""Reproduction bundles: one ``.tar.gz`` per failing scenario run, enough for a
colleague (or ``wdfhil replay``) to run the same thing again and to read what
happened without rerunning it.

Inside (``manifest.json`` says where each is):

- ``scenario/``: the scenario file and the guest programs it copies in;
- ``guest/<name>.yaml``: the guest config as it was resolved (a folder
  ``--guests-dir`` can take);
- ``manifest.json``: verdict, problems, structured findings, seeds, image
  name/digest/recipe/provenance and package versions, accelerator, QEMU
  command line, the device's settings;
- ``result.json``: the full result (steps, evidence);
- ``qemu-cmdline.txt``, ``qemu.log``, ``console.log``, ``trace.jsonl`` (the
  device's records during the scenario), ``pool-map.json`` and
  ``pool-window.bin`` (the pool window's pages the run allocated; where they
  start is in ``pool-map.json``'s ``dump``).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from wdfhil.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.scenario_result import ScenarioResult

FORMAT = "wdfhil-bundle/1"
MANIFEST = "manifest.json"
SUFFIX = ".bundle.tar.gz"


def bundle_name(result: "ScenarioResult") -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{result.scenario}-{result.guest}")
    return safe + SUFFIX


def _program_files(scenario_path: Path) -> list[Path]:
    """Files a scenario copies into the guest (``program`` steps), relative to it."""
    try:
        data = yaml.safe_load(scenario_path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    found = []
    for step in data.get("steps", []) if isinstance(data, dict) else []:
        if isinstance(step, dict):
            for kind, args in step.items():
                if kind == "program" and isinstance(args, dict) and isinstance(args.get("path"), str):
                    found.append(Path(args["path"]))
    return found


def write_bundle(result: "ScenarioResult", folder: str | Path) -> Path:
    """The bundle of ``result`` (which must carry evidence) in ``folder``."""
    evidence = result.evidence
    if evidence is None:
        raise ValueError(f"{result.scenario} on {result.guest} has no evidence to bundle")
    scenario_path = Path(result.path)
    run = evidence.run
    guest = run.get("guest", {"name": result.guest})
    members: dict[str, bytes] = {}
    scenario_member = f"scenario/{scenario_path.name}"
    members[scenario_member] = scenario_path.read_bytes()
    for relative in _program_files(scenario_path):
        source = scenario_path.parent / relative
        if source.is_file() and not relative.is_absolute() and ".." not in relative.parts:
            members[f"scenario/{relative.as_posix()}"] = source.read_bytes()
    guest_member = f"guest/{guest['name']}.yaml"
    config = {k: v for k, v in guest.items() if k != "name"}     # the file's name is the name
    members[guest_member] = yaml.safe_dump(config, sort_keys=False).encode()
    manifest = {
        "format": FORMAT, "created": time.time(), "scenario": result.scenario,
        "scenario_file": scenario_member, "guest": guest["name"], "guest_file": guest_member,
        "verdict": result.verdict, "problems": result.problems, "findings": evidence.findings,
        "failed_steps": [{"index": s.index, "kind": s.kind, "line": s.line, "detail": s.detail}
                         for s in result.steps if not s.ok],
        "refusals": result.refusals, "faults": result.faults,
        "seeds": run.get("seeds", {}), "image": run.get("image", {}),
        "accelerator": run.get("accelerator"), "device": run.get("device", {}),
        "qemu_argv": run.get("qemu_argv", []),
        "files": sorted(set(evidence.files) | {"result.json", "qemu-cmdline.txt", "pool-map.json"}),
    }
    members[MANIFEST] = json.dumps(manifest, indent=1).encode()
    members["result.json"] = json.dumps(result.to_json(), indent=1).encode()
    members["qemu-cmdline.txt"] = (" ".join(run.get("qemu_argv", [])) + "\n").encode()
    members["pool-map.json"] = json.dumps(evidence.pool, indent=1).encode()
    members.update(evidence.files)
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / bundle_name(result)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    path.chmod(0o600)
    return path


def open_bundle(path: str | Path, into: str | Path) -> dict[str, Any]:
    """Unpack a bundle into the folder ``into`` and return its manifest; anything
    that is not a bundle of this format is a ConfigError saying why."""
    path = Path(path)
    try:
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(into, filter="data")    # no absolute paths, links out, devices
    except FileNotFoundError:
        raise ConfigError("no such bundle", file=str(path)) from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"not a readable .tar.gz bundle: {exc}", file=str(path)) from None
    manifest_path = Path(into) / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"the bundle has no readable {MANIFEST}: {exc}", file=str(path)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{MANIFEST} is not a {FORMAT} manifest (format "
                          f"{manifest.get('format') if isinstance(manifest, dict) else None!r})",
                          file=str(path))
    for key in ("scenario_file", "guest_file", "guest", "image"):
        if key not in manifest:
            raise ConfigError(f"{MANIFEST} lacks '{key}'", file=str(path), field=key)
    for key in ("scenario_file", "guest_file"):
        if not (Path(into) / manifest[key]).is_file():
            raise ConfigError(f"the bundle lacks {manifest[key]} (named by {key})",
                              file=str(path), field=key)
    return manifest
