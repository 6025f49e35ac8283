"""The one exception the command line prints as a single line (exit 2): a problem with what
the user gave (the config, paths, files, a workdir), which the user can fix. Every other
exception is a bug or an accident and keeps its traceback."""


class UsageError(Exception):
  """A problem the user can fix; the message is one line."""
