"""Errors a stage reports to its user (the Job's termination message), not as a traceback."""


class StageInputError(Exception):
    """The stage's input is unusable (missing, wrong columns, nothing parseable): exit code 2."""
