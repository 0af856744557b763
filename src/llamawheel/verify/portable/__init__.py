"""Files copied to other machines (a GPU machine with neither llamawheel nor internet): the verification
runner and the tiny-model writer. Their rule: the standard library and numpy only (plus gguf for the
model writer and llama_cpp for the runner); never an import of llamawheel. The lint session enforces it."""
