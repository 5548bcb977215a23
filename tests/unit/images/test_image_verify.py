"""A cached image is checked against the sizes and SHA256 its build recorded, so a
truncated or changed boot file is named (and rebuilt) instead of booting into
"QEMU exited before the guest was ready"."""

from __future__ import annotations

import pytest

from guest_images.image import GuestImage, ImageDamaged


def make_image(folder, **files) -> GuestImage:
    contents = {"vmlinuz": b"k" * 5000, "initramfs.cpio.gz": b"i" * 3000, "client_key": b"key"}
    contents.update(files)
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    image = GuestImage(name="test", digest="ab" * 32, kernel=folder / "vmlinuz",
                       initramfs=folder / "initramfs.cpio.gz", kernel_cmdline=("console=ttyS0",),
                       client_key=folder / "client_key", host_key="ssh-ed25519 AAAA",
                       ssh_user="root", ready_marker="READY", kernel_version="6.1",
                       agent_path="/a", module_path="/m").with_file_records()
    image.write_manifest()
    return image


def test_a_whole_image_verifies_and_round_trips_through_its_manifest(tmp_path):
    image = make_image(tmp_path)
    loaded = GuestImage.from_folder(tmp_path)
    assert loaded.files == image.files and loaded.files["vmlinuz"]["size"] == 5000
    loaded.verify()


def test_a_truncated_kernel_is_named(tmp_path):
    image = make_image(tmp_path)
    with open(image.kernel, "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(ImageDamaged, match=r"vmlinuz .*1000 bytes, built with 5000") as caught:
        GuestImage.from_folder(tmp_path).verify()
    assert caught.value.file == "vmlinuz"


def test_a_changed_initramfs_of_the_same_size_is_named(tmp_path):
    image = make_image(tmp_path)
    image.initramfs.write_bytes(b"j" * 3000)
    with pytest.raises(ImageDamaged, match="initramfs.cpio.gz .*SHA256 differs"):
        GuestImage.from_folder(tmp_path).verify()


def test_a_missing_file_or_an_unrecorded_one_is_damage(tmp_path):
    image = make_image(tmp_path)
    image.client_key.unlink()
    with pytest.raises(ImageDamaged, match="client_key"):
        image.verify()
    older = GuestImage.from_folder  # a manifest from before file digests records none
    make_image(tmp_path)
    bare = older(tmp_path)
    object.__setattr__(bare, "files", {})
    with pytest.raises(ImageDamaged, match="records no digest"):
        bare.verify()
