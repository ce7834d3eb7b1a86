"""Errors caused by the user's input: the CLI prints their message on one line and exits 2."""


class UserError(Exception):
  """Bad flags, paths, data or workdir state; the message says what is wrong and how to fix it."""


class DataError(UserError):
  """A data source, split or file that cannot be used."""
