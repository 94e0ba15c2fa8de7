"""Named sizes of the config dataclasses (``ModelConfig.preset``, ``TrainConfig.preset``):
each class keeps a ``PRESETS`` table of overrides of its own defaults."""

from __future__ import annotations

from .errors import ConfigError


def from_preset(cls, name: str, overrides: dict):
    """``cls`` with preset ``name``'s values, then ``overrides``, on top of its defaults."""
    if name not in cls.PRESETS:
        raise ConfigError(f"{cls.__name__}.preset: unknown preset {name!r}; choose from {', '.join(cls.PRESETS)}")
    return cls(**{**cls.PRESETS[name], **overrides})
