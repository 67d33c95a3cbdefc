"""DCP's ``checkpoint_id`` (a path) has no meaning for castore: run and epoch name the
checkpoint. Both storage classes refuse it in the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from castore.errors import InvalidCheckpointError

if TYPE_CHECKING:
    import os

__all__ = ["NamedByRunAndEpoch"]


class NamedByRunAndEpoch:
    """DCP's ``reset`` and ``validate_checkpoint_id`` for a storage class that names its
    checkpoint by run and epoch; ``dcp_call`` is the DCP function it serves."""

    dcp_call: ClassVar[str]

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        """DCP's ``checkpoint_id`` has no meaning here: run and epoch name the checkpoint."""
        if checkpoint_id is not None:
            raise InvalidCheckpointError(
                f"castore.dcp.{type(self).__name__} names its checkpoint by run and epoch; "
                f"do not pass checkpoint_id ({checkpoint_id!r}) to {self.dcp_call}"
            )

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """Never picked by DCP from a ``checkpoint_id``: construct one explicitly."""
        del checkpoint_id
        return False
