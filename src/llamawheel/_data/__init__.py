"""Data shipped inside the package: ``recipes/``, ``mirrors/`` and ``docker/`` are mapped here from the
checkout's top-level folders when the package is built (``[tool.setuptools] package-dir`` in
pyproject.toml); `llamawheel.core.paths` finds them."""
