"""Errors matmtl raises on bad input. All subclass ValueError so callers that
already catch ValueError keep working."""


class MatmtlError(ValueError):
    """Base class of matmtl's input errors."""


class DataError(MatmtlError):
    """A dataset, table, formula or structure is unusable; the message says what and where."""


class DatasetNotFound(DataError, FileNotFoundError):
    """No local copy of a named dataset and no way to fetch it."""


class ConfigError(MatmtlError):
    """A training setting is out of range or of the wrong type; the message names it."""


class GeometryInputError(MatmtlError):
    """Unusable input to :mod:`matmtl.geometry` or its Rust core (shape, NaN/inf, visiting
    order, output buffer, device, backend); the message names the parameter."""


class InputTypeError(DataError, TypeError):
    """An input of a type matmtl cannot read (None, a number, a dict, bytes); the message
    names the input and its position. A TypeError, and a DataError (so ``on_bad`` applies)."""


def type_hint(value) -> str:
    """A hint for an input of a type matmtl cannot read, to append to its message ("" if none)."""
    if isinstance(value, dict):
        return " (a dict: for a pymatgen Structure.as_dict() pass Structure.from_dict(d))"
    if isinstance(value, (bytes, bytearray)):
        return " (bytes: decode them first, e.g. value.decode())"
    if value is None:
        return " (None: a missing value)"
    if type(value).__name__ == "DataFrame":
        return " (a DataFrame: pass its formula column, e.g. df['formula'])"
    return ""


class DistributedError(RuntimeError):
    """A data-parallel run lost one of its processes: a collective failed because another
    rank stopped (its own error says why) or did not answer within the timeout, or rank 0
    failed at something it does for all (claiming the run folder, saving the state). The
    message names this rank and what it was doing. Not an input error: a RuntimeError."""
