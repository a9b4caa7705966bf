"""The one dispatch point between core and the exporters/runtimes: entry-point groups
`gzsq.exporters` and `gzsq.runtimes` (pyproject.toml). Core never imports them by name."""
from __future__ import annotations

from importlib.metadata import entry_points

from gzsq.errors import GzsqError


def _group(group: str) -> dict:
    return {ep.name: ep for ep in entry_points(group=group)}


def available_exporters() -> list[str]:
    return sorted(_group("gzsq.exporters"))


def get_exporter(fmt: str):
    eps = _group("gzsq.exporters")
    if fmt not in eps:
        known = ", ".join(sorted(eps)) or "none (is gzsq installed with `pip install -e .`?)"
        raise GzsqError(f"no exporter for format {fmt!r}; available: {known}")
    try:
        return eps[fmt].load()()
    except ImportError as e:
        raise GzsqError(f"exporter {fmt!r} needs a package that is not installed ({e.name}); install it and retry") from None


def get_runtime(name: str):
    eps = _group("gzsq.runtimes")
    if name not in eps:
        raise GzsqError(f"no runtime harness {name!r}; available: {', '.join(sorted(eps)) or 'none'}")
    try:
        return eps[name].load()
    except ImportError as e:
        raise GzsqError(f"runtime {name!r} needs a package that is not installed ({e.name}); install it and retry") from None
