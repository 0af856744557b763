"""The build stage: options resolved in one order (`options`), a checked `planning.Plan`, the
sha256-pinned source (`sdist`) and the compile itself (`compile`: scikit-build-core, CMake, ninja and a
compile cache)."""
