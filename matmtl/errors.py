"""Errors matmtl raises on bad input. All subclass ValueError so callers that
already catch ValueError keep working."""


class MatmtlError(ValueError):
    """Base class of matmtl's input errors."""


class DataError(MatmtlError):
    """A dataset, table, formula or structure is unusable; the message says what and where."""


class DatasetNotFound(DataError, FileNotFoundError):
    """No local copy of a named dataset and no way to fetch it."""
