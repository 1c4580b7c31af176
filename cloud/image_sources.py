"""Where a cloud user's images may come from: the site's registries and mirrors, the user's own
uploads, and (for an administrator) the site's image directories. Nothing else of the host.

    sources = site_sources(image_dirs=(Path("/srv/images"),))
    sources.registries        # ("http://127.0.0.1:8081",): $IMAGEKIT_MARKET or the default
    sources.origins           # the registries, then policy.cfg's [download] mirrors
    inside(path, dirs)        # a local image file within one of ``dirs`` (symlinks resolved)

The registry endpoint is the one the marketplace commands and the cloud core already use
(``marketplace.client.endpoint``: ``--endpoint``, ``$IMAGEKIT_MARKET``, the local server); the
mirrors are ``etc/policy.cfg``'s. A front door checks a location against them when it is
registered (before any connection); the cloud core checks again when it deploys
(``cloud/images.py``), and the download follows no redirect out of them (``SitePolicy.origins``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from marketplace.origins import within

if TYPE_CHECKING:
    from cloud.siteconfig import SiteConfig


@dataclass(frozen=True)
class SiteSources:
    registries: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    image_dirs: tuple[Path, ...] = ()  # site images an administrator may register by path

    @property
    def origins(self) -> tuple[str, ...]:
        return self.registries + self.mirrors

    def on_registry(self, url: str) -> bool:
        return within(url, self.registries)


def site_sources(
    site: SiteConfig | None = None, *, endpoint: str | None = None, image_dirs: Iterable[Path] = ()
) -> SiteSources:
    """The site's registry endpoint and its policy's mirrors, as ``vm create`` would use them
    (``site`` none: ``load_site()``, a library caller's)."""
    from cloud.siteconfig import load_site
    from marketplace.client import endpoint as registry_endpoint

    return SiteSources(
        registries=(registry_endpoint(endpoint),),
        mirrors=(site or load_site()).mirrors,
        image_dirs=tuple(Path(d).resolve() for d in image_dirs),
    )


def inside(path: Path, directories: Iterable[Path]) -> bool:
    """Whether ``path``, symlinks resolved, is a file within one of ``directories``."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return real.is_file() and any(real.is_relative_to(d.resolve()) for d in directories)
