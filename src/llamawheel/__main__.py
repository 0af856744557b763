from llamawheel.cli import entry

entry()
