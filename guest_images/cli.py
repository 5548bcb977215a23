"""``wdfhil image build|lock|list|clean``: the image builder on the command line."""

from __future__ import annotations

import argparse
import time

from guest_images.builder import build_image, unpacked_tree_key
from guest_images.cache import (ImageStore, default_unpacked_root, image_digest,
                                remove_abandoned_builds)
from guest_images.image import GuestImage
from guest_images.lockfile import LOCKED_ENV, ROLES, Lock, check_lock, load_lock, relock
from guest_images.progress import StatusLine
from guest_images.recipe import DEFAULT_RECIPE, available_recipes, load_recipe
from wdfhil.errors import WdfhilError
from wdfhil.private_dirs import cache_dir, remove_tree


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "image", help="build, pin, list and clean guest images",
        description="Guest images are built from Debian packages by a recipe "
                    "(guest_images/recipes/*.yaml) and cached by content digest.")
    commands = parser.add_subparsers(dest="image_command", metavar="ACTION", required=True)

    build = commands.add_parser("build", help="build an image (or find it in the cache)")
    build.add_argument("recipe", nargs="?", default=None,
                       help=f"recipe name or file (default: {DEFAULT_RECIPE})")
    build.add_argument("--relock", action="store_true",
                       help="re-pin the recipe's packages from apt before building")
    build.add_argument("--locked", action="store_true",
                       help="strict: fail when a pinned version can no longer be downloaded "
                            f"instead of re-resolving within the lock's suite (also: "
                            f"{LOCKED_ENV}=1)")
    build.set_defaults(func=_build)

    lock = commands.add_parser("lock", help="re-pin a recipe's packages to apt's current "
                                            "versions (writes <recipe>.lock)")
    lock.add_argument("recipe", nargs="?", default=None,
                      help=f"recipe name or file (default: {DEFAULT_RECIPE})")
    lock.set_defaults(func=_lock)

    listing = commands.add_parser("list", help="list the cached images, with the kernel "
                                               "and package versions each was built from")
    listing.add_argument("--packages", action="store_true",
                         help="also list every package version of each image")
    listing.set_defaults(func=_list)

    clean = commands.add_parser("clean", help="remove cached images that no recipe builds "
                                              "any more, and abandoned build folders")
    clean.add_argument("--all", action="store_true",
                       help="remove every cached image and downloaded package")
    clean.set_defaults(func=_clean)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _print(message: str) -> None:
    print(message, flush=True)


def _relock(recipe_arg: str | None) -> None:
    recipe = load_recipe(recipe_arg)
    lock = relock(recipe, _print)
    _print(f"pinned {len(lock.packages)} packages (kernel {lock.kernel_release}, "
           f"suite {lock.suite or 'unknown'}) in {recipe.lock_path}")


def _lock(args: argparse.Namespace) -> int:
    _relock(args.recipe)
    return 0


def _build(args: argparse.Namespace) -> int:
    if args.relock:
        _relock(args.recipe)
    status = StatusLine()
    try:
        image = build_image(args.recipe, progress=status, locked=True if args.locked else None)
    finally:
        status.clear()
    _print(f"image:     {image.name} {image.digest}\n"
           f"built:     {image.provenance}\n"
           f"kernel:    {image.kernel} ({image.kernel_release})\n"
           f"initramfs: {image.initramfs} ({_mib(image.initramfs.stat().st_size)})\n"
           f"cmdline:   {' '.join(image.kernel_cmdline)}\n"
           f"ssh:       {image.ssh_user} with {image.client_key}, host key {image.host_key}")
    return 0


def current_locks(store: ImageStore) -> dict[str, list[tuple[str, Lock]]]:
    """(digest, lock) of each shipped recipe as it builds now: its lock as committed,
    and the re-resolution a build used if that lock was stale. Recipes without a
    valid lock are left out; nothing is asked of apt."""
    found: dict[str, list[tuple[str, Lock]]] = {}
    for name in available_recipes():
        try:
            recipe = load_recipe(name)
            lock = load_lock(recipe.lock_path)
            check_lock(recipe, lock)
        except WdfhilError:
            continue
        digest = image_digest(recipe, lock)
        found[name] = [(digest, lock)]
        earlier = store.resolution(name, digest)
        if earlier is not None:
            found[name].append((earlier.digest, earlier.lock))
    return found


def _list(args: argparse.Namespace) -> int:
    store = ImageStore()
    current = {name: {digest for digest, _lock in locks}
               for name, locks in current_locks(store).items()}
    images = store.images()
    if not images:
        _print(f"no images in {store.root}")
        return 0
    _print(f"{'NAME':<16} {'DIGEST':<13} {'SIZE':>8}  {'BUILT':<16} {'KERNEL':<34} "
           f"{'LOCK':<12} STATE")
    for cached in images:
        state = ("current" if cached.digest in current.get(cached.name, ())
                 else "stale" if cached.name in current else "(recipe not shipped)")
        built = time.strftime("%Y-%m-%d %H:%M", time.localtime(cached.built_at))
        try:
            image = GuestImage.from_folder(cached.folder)
        except WdfhilError:
            _print(f"{cached.name:<16} {cached.digest[:12]:<13} {'':>8}  {built:<16} "
                   "(damaged: no readable manifest)")
            continue
        kernel_package = image.details.get("kernel_package", "")
        kernel = f"{image.kernel_release} {image.package_versions.get(kernel_package, '')}"
        _print(f"{cached.name:<16} {cached.digest[:12]:<13} {_mib(cached.size):>8}  "
               f"{built:<16} {kernel.strip():<34} {image.lock_state:<12} {state}")
        if args.packages:
            for package, version in sorted(image.package_versions.items()):
                _print(f"    {package} {version}")
    return 0


def _clean(args: argparse.Namespace) -> int:
    store = ImageStore()
    current = current_locks(store)
    removed = 0
    for image in store.images():
        if args.all or (image.name in current and
                        image.digest not in {digest for digest, _lock in current[image.name]}):
            store.remove(image.name, image.digest)
            removed += 1
    store.forget_resolutions(set() if args.all else
                             {(name, locks[0][0]) for name, locks in current.items()})
    unpacked_root = default_unpacked_root()
    keep = {(role, unpacked_tree_key(lock, role))
            for locks in current.values() for _digest, lock in locks for role in ROLES}
    trees = 0
    for role in ROLES:
        for tree in sorted((unpacked_root / role).glob("[!.]*")):
            if args.all or (role, tree.name) not in keep:
                remove_tree(tree)
                trees += 1
    abandoned = remove_abandoned_builds(store.root) + remove_abandoned_builds(unpacked_root)
    _print(f"removed {removed} image(s), {trees} unpacked package tree(s) and {abandoned} "
           "abandoned build folder(s)")
    if args.all:
        debs = cache_dir("debs")
        count = len(list(debs.glob("*.deb")))
        remove_tree(debs)
        _print(f"removed {count} downloaded package(s) from {debs}")
    return 0
