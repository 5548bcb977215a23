"""Guest images built from Debian packages: recipes, the builder and its cache.

The orchestrator uses only what is exported here::

    image = build_image("debian12-cloud")   # cached by content digest
    image.kernel, image.initramfs, image.kernel_cmdline, image.client_key, image.host_key

See docs/guest-images.md.
"""

from guest_images.builder import build_image
from guest_images.image import GuestImage
from guest_images.recipe import DEFAULT_RECIPE, available_recipes, load_recipe, recipe_path

__all__ = ["DEFAULT_RECIPE", "GuestImage", "available_recipes", "build_image", "load_recipe",
           "recipe_path"]
