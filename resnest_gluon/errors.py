"""The error a user can fix: every command prints its message as one ``error:`` line and exits 1."""

__all__ = ["UserError"]


class UserError(RuntimeError):
    """A mistake in a command's inputs or options, with a message that says what to do."""
