"""Federation between locations over the authenticated cluster channel."""

from .service import Federation

__all__ = ["Federation"]
