"""Runtime helpers copied into the llamawheel image as the package `llamawheel_runtime` (standard library only)."""
