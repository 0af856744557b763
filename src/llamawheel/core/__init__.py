"""The shared core every stage builds on: errors and exit codes, what the user is told (`log`), data
and cache paths, atomic files, hashes and locks (`fileio`), subprocesses (`proc`), strict data files
(`datafile`). It imports no stage."""
