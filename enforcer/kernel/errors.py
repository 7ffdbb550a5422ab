"""What the kernel layer raises."""

from __future__ import annotations


class KernelError(RuntimeError):
    pass


class LayoutChanged(KernelError):
    """Pinned maps of another layout are in use: this build cannot adopt them."""


class MapFull(KernelError):
    """A rule map has no room for a generation's entries (all sandboxes share it)."""
