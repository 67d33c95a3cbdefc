"""The ``castore`` command: argument parsing and printing only."""
