"""Operator jobs over a whole store, each planned as data and then executed.

accounting (``du``), retention (which checkpoints to forget), gc (two-phase garbage
collection with a grace period), verify and repair (every referenced blob decodes to
its digest), diff (what changed between two checkpoints). Imported by ``castore.api``;
never imports it.
"""

__all__: list[str] = []
