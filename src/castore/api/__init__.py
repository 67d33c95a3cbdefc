"""User-facing objects: Store and Run, thin facades over the layers below."""
