"""Bytes by digest on an fsspec filesystem; knows nothing of tensors."""

from castore.blobstore.digest import Digest, is_digest, short
from castore.blobstore.location import Location, open_location
from castore.blobstore.store import BlobStore

__all__ = ["BlobStore", "Digest", "Location", "is_digest", "open_location", "short"]
