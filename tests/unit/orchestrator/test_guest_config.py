"""Guest configs: the shipped ones load, and every mistake names file, line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator.guest_config import (DEFAULT_GUEST, GuestConfig, IomemRange, PoolWindow,
                                       check_pool_window_in_iomem, check_reserved_windows_in_iomem,
                                       list_guest_configs,
                                       load_guest_config, parse_iomem, pool_window_warnings)
from wdfhil.errors import ConfigError, GuestError
from wdfhil.units import parse_size

GOOD = """\
description: test guest
machine: q35
memory: 3G
cpus: 2
accelerator: auto
iommu: none
kernel_args:
  - quiet
  - loglevel=3
pool:
  base: 0x110000000
  size: 256M
image: debian12-cloud
"""


def write(tmp_path, text: str, name: str = "guest.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def replace_line(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_shipped_configs_load_and_are_the_required_ones():
    names = list_guest_configs()
    assert {"pc-256m", "q35-1g", "q35-3g-highmem", "q35-iommu"} <= set(names)
    for name in names:
        config = load_guest_config(name)
        assert config.name == name and config.source.endswith(f"{name}.yaml")
        assert config.kernel_arguments()[0] == config.pool.kernel_arg()
    assert load_guest_config().name == DEFAULT_GUEST


def test_highmem_config_puts_the_pool_above_4g():
    config = load_guest_config("q35-3g-highmem")
    split = config.ram_split
    assert config.pool.base >= 1 << 32
    assert split.below_4g == 2 << 30 and split.above_4g == 1 << 30
    assert split.file_offset(config.pool.base) == (2 << 30) + (config.pool.base - (1 << 32))


def test_iommu_config_enables_the_guest_iommu():
    config = load_guest_config("q35-iommu")
    assert config.machine == "q35" and config.iommu == "intel"
    assert "intel_iommu=on" in config.kernel_arguments()


def test_good_file_reads_every_field(tmp_path):
    config = load_guest_config(write(tmp_path, GOOD))
    assert config.machine == "q35" and config.memory == 3 << 30 and config.cpus == 2
    assert config.kernel_args == ("quiet", "loglevel=3")
    assert config.pool == PoolWindow(0x110000000, 256 << 20)
    assert config.low_dma is None and config.low_dma_window == PoolWindow(64 << 20, 1 << 20)   # the default
    assert config.kernel_arguments() == ["memmap=256M$0x110000000", "memmap=1M$0x4000000", "quiet", "loglevel=3"]
    assert config.image == "debian12-cloud" and config.name == "guest"


# (replace this line, with that, expected line, expected field, words in the message)
BAD_CASES = [
    ("machine: q35", "machin: q35", 2, "machin", "unknown field"),
    ("machine: q35", "machine: isapc", 2, "machine", "isapc"),
    ("memory: 3G", "memory: lots", 3, "memory", "not a size"),
    ("memory: 3G", "memory: 32M", 3, "memory", "at least"),
    ("memory: 3G", "memory: 1000000000", 3, "memory", "whole number of MiB"),
    ("cpus: 2", "cpus: 0", 4, "cpus", "between 1"),
    ("cpus: 2", "cpus: two", 4, "cpus", "expected int"),
    ("cpus: 2", "cpus: yes", 4, "cpus", "expected int"),
    ("accelerator: auto", "accelerator: xen", 5, "accelerator", "xen"),
    ("iommu: none", "iommu: amd", 6, "iommu", "amd"),
    ("  - loglevel=3", "  - memmap=1M$0x1000000", 9, "kernel_args[1]", "pool window"),
    ("  - loglevel=3", "  - two words", 9, "kernel_args[1]", "without spaces"),
    ("  - loglevel=3", "  - 3", 9, "kernel_args[1]", "expected a string"),
    ("  base: 0x110000000", "  base: 0x110000800", 11, "pool.base", "page aligned"),
    ("  base: 0x110000000", "  base: 8M", 11, "pool.base", "at least"),
    ("  base: 0x110000000", "  base: 0x138000000", 11, "pool.base", "not inside"),
    ("  base: 0x110000000", "  base: 0x7c000000", 11, "pool.base", "not inside"),  # across the hole
    ("  base: 0x110000000", "  bass: 0x110000000", 11, "pool.bass", "unknown field"),
    ("  size: 256M", "  size: 0", 12, "pool.size", "positive multiple"),
    ("  size: 256M", "  size: 1000", 12, "pool.size", "positive multiple"),
    ("image: debian12-cloud", "image: [a, b]", 13, "image", "expected str"),
]


@pytest.mark.parametrize("old,new,line,field,words", BAD_CASES,
                         ids=[f"{case[3]}:{case[1].strip()}" for case in BAD_CASES])
def test_bad_field_names_file_line_and_field(tmp_path, old, new, line, field, words):
    path = write(tmp_path, replace_line(GOOD, old, new))
    with pytest.raises(ConfigError) as info:
        load_guest_config(path)
    error = info.value
    assert (error.file, error.line, error.field) == (str(path), line, field), str(error)
    assert words in str(error) and f"{path}:{line}:" in str(error)


def test_iommu_on_pc_is_refused_at_its_line(tmp_path):
    text = replace_line(GOOD, "machine: q35", "machine: pc")
    text = replace_line(text, "memory: 3G", "memory: 1G")
    text = replace_line(text, "  base: 0x110000000", "  base: 256M")
    text = replace_line(text, "iommu: none", "iommu: intel")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_guest_config(path)
    assert (info.value.line, info.value.field) == (6, "iommu") and "q35" in str(info.value)


POOL_BLOCK = "pool:\n  base: 0x110000000\n  size: 256M\n"
ARGS_BLOCK = "kernel_args:\n  - quiet\n  - loglevel=3\n"
# (text to replace, replacement, expected field, expected line, words in the message)
SHAPE_CASES = [
    (POOL_BLOCK, "", "pool", 1, "missing"),
    (POOL_BLOCK, "pool: 64M\n", "pool", 10, "mapping"),
    ("  size: 256M\n", "", "pool.size", 11, "missing"),  # the pool mapping starts at 'base'
    (ARGS_BLOCK, "kernel_args: quiet\n", "kernel_args", 7, "list of strings"),
]


@pytest.mark.parametrize("old,new,field,line,words", SHAPE_CASES,
                         ids=["no-pool", "pool-scalar", "no-pool-size", "args-scalar"])
def test_wrong_shape_names_the_field(tmp_path, old, new, field, line, words):
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_guest_config(path)
    assert (info.value.file, info.value.field, info.value.line) == (str(path), field, line)
    assert words in str(info.value)


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, GOOD + "oops: [\n")
    with pytest.raises(ConfigError) as info:
        load_guest_config(path)
    assert info.value.file == str(path) and info.value.line is not None


def test_unknown_name_lists_the_known_configs():
    with pytest.raises(ConfigError) as info:
        load_guest_config("pc-1t")
    assert "pc-256m" in str(info.value) and "q35-iommu" in str(info.value)


def test_programmatic_config_is_validated_too():
    good = GuestConfig(name="t", machine="pc", memory=256 << 20,
                       pool=PoolWindow(64 << 20, 64 << 20))
    assert good.ram_split.above_4g == 0
    with pytest.raises(ConfigError) as info:
        good.with_changes(pool=PoolWindow(240 << 20, 64 << 20))
    assert info.value.field == "pool.base" and info.value.line is None
    with pytest.raises(ConfigError):
        good.with_changes(machine="q35", iommu="intel", memory=32 << 20)


def test_pool_over_the_initrd_is_refused_with_the_pool_line():
    config = load_guest_config("pc-256m")
    config.check_pool_clear_of_initrd(40 << 20)  # fits above the window
    with pytest.raises(ConfigError) as info:
        config.check_pool_clear_of_initrd(200 << 20)
    assert info.value.field == "pool.base" and info.value.file.endswith("pc-256m.yaml")
    assert info.value.line == config.field_lines["pool.base"] and "initramfs" in str(info.value)


def test_config_identity_ignores_where_it_was_read(tmp_path):
    first = load_guest_config(write(tmp_path, GOOD, "a.yaml"))
    second = load_guest_config(write(tmp_path, "# a comment\n" + GOOD, "a2.yaml"))
    assert first.with_changes(name="x") == second.with_changes(name="x")
    assert hash(first.with_changes(name="x")) == hash(second.with_changes(name="x"))


@pytest.mark.parametrize("content", [
    b"machine: pc\nmemory: 256M\x00\n",
    b"machine: pc\ndescription: caf\xe9\n",
    b"machine: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    b"a: &a [" + b", ".join([b"lol"] * 9) + b"]\n" + b"".join(
        b"%c: &%c [" % (n, n) + b", ".join([b"*%c" % p] * 9) + b"]\n"
        for p, n in zip(b"abcdefgh", b"bcdefghi")) + b"machine: *i\n",
], ids=["nul", "latin1", "deep", "alias-bomb"])
def test_hostile_config_files_exit_2_with_file_and_line(tmp_path, capsys, content):
    from orchestrator.cli import main

    path = tmp_path / "hostile.yaml"
    path.write_bytes(content)
    assert main(["vm", "configs", str(path)]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"INVALID {path}:") and len(out) < 2000
    assert main(["vm", "run", "--config", str(path), "--", "true"]) == 2
    assert f"wdfhil: error: {path}:" in capsys.readouterr().err


def test_config_dev_zero_exits_2(capsys):
    from orchestrator.cli import main

    assert main(["vm", "run", "--config", "/dev/zero", "--", "true"]) == 2
    assert "/dev/zero: the file is larger than" in capsys.readouterr().err


# -- the window against the running guest's /proc/iomem (captured from real guests) --------
IOMEM = Path(__file__).parent / "iomem"


def iomem(name: str) -> str:
    return (IOMEM / f"{name}.txt").read_text()


def pc_with(base: str | None = None, kernel_args: tuple[str, ...] = ()) -> GuestConfig:
    config = load_guest_config("pc-256m")
    pool = PoolWindow(parse_size(base), config.pool.size) if base else config.pool
    return config.with_changes(pool=pool, kernel_args=kernel_args)


def test_iomem_is_parsed_with_nesting():
    ranges = parse_iomem(iomem("pc-256m-nokaslr"))
    code = next(r for r in ranges if r.name == "Kernel code")
    assert (code.start, code.end, code.depth) == (0x1000000, 0x1e01ef2, 1)
    assert IomemRange(0x4000000, 0x8000000, "Reserved", 0) in ranges
    assert ranges[-1] == IomemRange(0xfd00000000, 0x10000000000, "Reserved", 0)


@pytest.mark.parametrize("capture", ["pc-256m", "pc-256m-nokaslr"])
def test_a_reserved_window_clear_of_the_kernel_passes(capture):
    check_pool_window_in_iomem(pc_with(), iomem(capture))


def test_a_window_the_kernel_runs_in_is_refused_naming_pool_base():
    """pool.base 16M with nokaslr: the kernel's code sits at 0x1000000-0x1e01ef1."""
    config = pc_with("16M", ("nokaslr",))
    with pytest.raises(ConfigError) as info:
        check_pool_window_in_iomem(config, iomem("pc-256m-pool-16M-nokaslr"))
    error = info.value
    assert (error.field, error.line) == ("pool.base", config.field_lines["pool.base"])
    assert "'Kernel code' 0x1000000-0x1e01ef1" in str(error) and "KASLR" in str(error)


@pytest.mark.parametrize("base,words", [
    ("32M", "'System RAM' 0x100000-0x3ffffff is in it"),     # the guest never reserved it
    ("96M", "'System RAM' 0x8000000-0xffdffff is in it"),    # half reserved, half RAM
])
def test_a_window_the_guest_did_not_reserve_is_refused(base, words):
    """The capture's window is 64M-128M; a config claiming another one must not pass."""
    with pytest.raises(ConfigError) as info:
        check_pool_window_in_iomem(pc_with(base), iomem("pc-256m"))
    assert info.value.field == "pool.base" and "did not reserve" in str(info.value)
    assert words in str(info.value)


def test_a_window_over_several_adjacent_reserved_ranges_passes():
    text = ("00100000-03ffffff : System RAM\n04000000-05ffffff : Reserved\n"
            "06000000-07ffffff : Reserved\n08000000-0ffdffff : System RAM\n")
    check_pool_window_in_iomem(pc_with(), text)


def test_a_gap_in_the_reserved_ranges_is_refused():
    text = "00100000-03ffffff : System RAM\n04000000-05ffffff : Reserved\n"
    with pytest.raises(ConfigError) as info:
        check_pool_window_in_iomem(pc_with(), text)
    assert "0x6000000-0x7ffffff is not reserved" in str(info.value)


def test_iomem_read_without_root_cannot_vouch_for_anything():
    text = "00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n"
    with pytest.raises(GuestError):
        check_pool_window_in_iomem(pc_with(), text)


def test_windows_that_depend_on_kernel_placement_are_warned_about():
    assert pool_window_warnings(pc_with()) == []           # shipped: 64M, above the kernel
    for name in list_guest_configs():
        assert pool_window_warnings(load_guest_config(name)) == [], name
    (warning,) = pool_window_warnings(pc_with("16M"))
    assert "KASLR" in warning and "0x1000000-0x3ffffff" in warning
    (warning,) = pool_window_warnings(pc_with("16M", ("nokaslr",)))
    assert "every start will be refused" in warning


def test_vm_configs_prints_the_warning(tmp_path, capsys):
    from orchestrator.cli import main

    path = write(tmp_path, "machine: pc\nmemory: 256M\npool:\n  base: 32M\n  size: 16M\n",
                 "low.yaml")
    assert main(["vm", "configs", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ok      low" in out and "warning low: pool window 0x2000000-0x3000000" in out


def test_user_config_folders_come_first_and_shadow_built_ins(tmp_path, monkeypatch):
    """--guests-dir / WDFHIL_GUESTS_PATH add the user's own configs, validated the same way."""
    from orchestrator.guest_config import BUILTIN_GUESTS_DIR, GUESTS_PATH_ENV, guest_config_dirs
    mine, team = tmp_path / "mine", tmp_path / "team"
    mine.mkdir()
    team.mkdir()
    builtin = (BUILTIN_GUESTS_DIR / "pc-256m.yaml").read_text()
    (mine / "pc-256m.yaml").write_text(builtin.replace("description:", "description: mine -"))
    (team / "team-box.yaml").write_text(builtin)
    (team / "broken.yaml").write_text(builtin.replace("machine: pc", "machine: pdp11"))
    monkeypatch.setenv(GUESTS_PATH_ENV, str(team))
    assert guest_config_dirs([mine]) == [mine, team, BUILTIN_GUESTS_DIR]
    assert {"pc-256m", "team-box", "broken", "q35-1g"} <= set(list_guest_configs([mine]))
    assert load_guest_config("pc-256m", [mine]).description.startswith("mine -")
    assert load_guest_config("pc-256m").source == str(BUILTIN_GUESTS_DIR / "pc-256m.yaml")
    assert load_guest_config("team-box").name == "team-box"
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+.*machine"):
        load_guest_config("broken")


def test_a_config_folder_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    from orchestrator.guest_config import GUESTS_PATH_ENV
    monkeypatch.setenv(GUESTS_PATH_ENV, str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="WDFHIL_GUESTS_PATH names .*nope.*not a folder"):
        load_guest_config("pc-256m")


# -- the low DMA window -----------------------------------------------------------------------

LOW_DMA = GOOD.replace("image: debian12-cloud\n", "low_dma:\n  base: 0x7000000\n  size: 2M\nimage: debian12-cloud\n")


def test_low_dma_window_is_read_with_its_lines_and_reserved_on_the_command_line(tmp_path):
    config = load_guest_config(write(tmp_path, LOW_DMA))
    assert config.low_dma == config.low_dma_window == PoolWindow(0x7000000, 2 << 20)
    assert "memmap=2M$0x7000000" in config.kernel_arguments()
    assert (config.field_lines["low_dma.base"], config.field_lines["low_dma.size"]) == (14, 15)


@pytest.mark.parametrize("old,new,line,field,words", [
    ("  base: 0x7000000", "  base: 0x7000010", 14, "low_dma.base", "page aligned"),
    ("  base: 0x7000000", "  base: 0x130000000", 14, "low_dma.base", "below 4 GiB"),
    ("  base: 0x7000000", "  base: 4M", 14, "low_dma.base", "at least"),
    ("  base: 0x7000000", "  base: 0x7ff00000", 14, "low_dma.base", "not inside"),
    ("  size: 2M", "  size: 0", 15, "low_dma.size", "positive multiple"),
    ("  size: 2M", "  sise: 2M", 15, "low_dma.sise", "unknown field"),
], ids=["unaligned", "above-4g", "under-16M", "past-low-ram", "empty", "typo"])
def test_a_bad_low_dma_window_names_file_line_and_field(tmp_path, old, new, line, field, words):
    path = write(tmp_path, replace_line(LOW_DMA, old, new))
    with pytest.raises(ConfigError) as info:
        load_guest_config(path)
    error = info.value
    assert (error.file, error.line, error.field) == (str(path), line, field), str(error)
    assert words in str(error)


def test_the_default_low_dma_window_keeps_clear_of_the_pool_and_below_4g():
    assert load_guest_config("pc-256m").low_dma_window == PoolWindow(128 << 20, 1 << 20)   # pool at 64M
    assert load_guest_config("q35-3g-highmem").low_dma_window.end <= 1 << 32
    small = GuestConfig(name="t", machine="pc", memory=64 << 20, pool=PoolWindow(16 << 20, 32 << 20))
    assert small.low_dma_window == PoolWindow(48 << 20, 1 << 20)        # no RAM at 64M: above the pool
    with pytest.raises(ConfigError) as info:
        GuestConfig(name="t", machine="pc", memory=64 << 20, pool=PoolWindow(16 << 20, 48 << 20))
    assert info.value.field == "low_dma" and "set low_dma.base" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_guest_config("pc-256m").with_changes(low_dma=PoolWindow(120 << 20, 16 << 20))
    assert info.value.field == "low_dma.base" and "overlaps the pool window" in str(info.value)


def test_a_low_dma_window_over_the_initrd_is_refused():
    config = load_guest_config("pc-256m").with_changes(low_dma=PoolWindow(240 << 20, 1 << 20))
    with pytest.raises(ConfigError) as info:
        config.check_pool_clear_of_initrd(40 << 20)
    assert info.value.field == "low_dma.base" and "low DMA window" in str(info.value)


def test_the_low_dma_window_must_be_reserved_in_the_running_guest():
    config = pc_with()                        # pool 64M-128M, low DMA window 128M-129M
    reserved = ("00100000-03ffffff : System RAM\n04000000-07ffffff : Reserved\n"
                "08000000-080fffff : Reserved\n08100000-0ffdffff : System RAM\n")
    check_reserved_windows_in_iomem(config, reserved)
    with pytest.raises(ConfigError) as info:
        check_reserved_windows_in_iomem(config, iomem("pc-256m"))   # a capture from before low_dma
    assert info.value.field == "low_dma.base" and "did not reserve the low DMA window" in str(info.value)
