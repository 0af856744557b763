"""llamawheel: build, repair, verify and publish CUDA wheels of llama-cpp-python."""

__version__ = "0.1.0"
