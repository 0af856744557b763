"""The verify stage: static checks of a wheel's ELF files and fat binaries (`static`), diagnoses
that name a cause and a fix (`diagnose`), and the proof on this machine's GPU (`installed`), which runs the
portable runner in a fresh venv."""
