"""The user-facing error types: anything raised as a JaxcnnError is the user's to fix."""


class JaxcnnError(Exception):
    """A usage, config or data problem. The CLI prints the message and exits 2."""


class SpecError(JaxcnnError, ValueError):
    """A model or run spec is malformed or describes an impossible network."""


class DataError(JaxcnnError):
    """A dataset cannot be found, built or matched to the model."""


class CheckpointError(JaxcnnError):
    """A checkpoint is missing, corrupt, or does not fit the model."""


class TrainingError(JaxcnnError):
    """Training cannot go on (for example the loss became NaN or Inf)."""
