"""Tree <-> tensors <-> chunks; does no I/O of its own.

Import the submodules directly: ``refs`` is torch-free so the manifest layer (and with it
``castore ls`` and query notebooks) can use it without importing torch.
"""
