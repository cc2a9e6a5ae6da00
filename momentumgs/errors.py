"""Errors that reach the user as one line (the CLI prints them and exits with code 2)."""


class UserError(Exception):
    """Bad input from the user: a file, an option or a config value. The message names it."""


class ConfigError(UserError):
    """An unknown key, a wrong type or a bad value in a config file or a `--set` override."""


class SceneError(UserError):
    """A COLMAP scene (or image) that cannot be read as asked."""
