"""The base of the typed values that findings and actions carry (levels, sample checks, diagnoses,
candidates' verdicts): frozen dataclasses that turn into the JSON the database and the CLI keep, and
back.

They were plain dicts once, and rule plugins read them as such (`finding.before["median"]`,
`.get("summary")`): `Value` keeps that working, read-only, while new code reads attributes that a
type checker sees.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class Value:
    """Mapping-style reads of a dataclass's JSON form: `v["name"]`, `v.get("name")`, `"name" in v`.

    The JSON form leaves out fields that are None, as the dicts these values replaced did, so a
    key is "in" the value when it holds something.
    """

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        assert dataclasses.is_dataclass(self)
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    def __getitem__(self, name: str) -> Any:
        return self.to_dict()[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.to_dict().get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self.to_dict()

    def keys(self) -> list[str]:
        return list(self.to_dict())


def _plain(value: Any) -> Any:
    """A value as JSON holds it: nested values as dicts, tuples as lists."""
    if isinstance(value, Value):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
