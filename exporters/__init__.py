"""Exporters (installed as gzsq.exporters). Registered with core through the `gzsq.exporters`
entry-point group in pyproject.toml, so core never imports them by name."""
