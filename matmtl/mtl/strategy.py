"""What balancers and surgeries share: a name, settings as JSON (``to_dict``), equality
and repr by those settings, and construction back from a name or that JSON form."""

from __future__ import annotations


class Strategy:
    name = "base"

    def to_dict(self) -> dict:
        """The strategy's settings (not its learned state), as stored in a run's config.json."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    __hash__ = None


def from_spec(base: type, kinds: dict[str, type], spec, what: str, default: type):
    """A ``base`` object from its name in ``kinds``, its ``to_dict()`` form, or itself;
    ``None`` gives ``default()``."""
    if spec is None:
        return default()
    if isinstance(spec, base):
        return spec
    if not isinstance(spec, (str, dict)):
        raise TypeError(f"a {what} strategy must be a {base.__name__}, a name or a dict, got {spec!r}")
    d = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = d.pop("name", None)
    if name not in kinds:
        raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(kinds)}")
    return kinds[name](**d)
