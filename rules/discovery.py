"""Which rules exist (built-in, or installed plugins' entry points) and which ones the config asks for.

A plugin is any installed package that registers a `Rule` subclass under the entry point group
`perfguard.rules` (the pytest/pluggy way). Discovery never lets a plugin crash it: one that fails to
import, is not a usable Rule, or takes a built-in's name is listed with what is wrong, and only a
config that uses it is refused (by `load_config`, through `validate_rules`, before any database).
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import threading
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from monitor.config import Config, ConfigError
from rules.api import ENTRY_POINT_GROUP, Rule, RuleParams
from rules.builtin import BUILTIN_RULES

log = logging.getLogger(__name__)

BUILTIN_ORIGIN = "perfguard (built-in)"


@dataclass(frozen=True, slots=True)
class ParamInfo:
    """One parameter of a rule, from its pydantic schema."""

    name: str
    type: str
    default: Any  # as JSON; None when required
    required: bool
    description: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default, "required": self.required,
                "description": self.description}


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """A rule that can be used in `[[rules]]`, or a plugin that cannot (with its `error`)."""

    name: str
    origin: str  # "perfguard (built-in)" or "DIST-NAME VERSION"
    description: str = ""
    params: tuple[ParamInfo, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "origin": self.origin, "description": self.description,
                "params": [p.to_json() for p in self.params], "error": self.error}


@dataclass(frozen=True, slots=True)
class ConfiguredRule:
    """One `[[rules]]` entry, built: the rule instance with its validated params and its limits."""

    index: int  # position in the config's rules list
    use: str
    label: str  # `use`, or `use#2` for the second entry of the same rule: names its events and cooldown
    rule: Rule
    origin: str
    models: frozenset[str] | None  # None: every model
    priority: int
    cooldown: str
    cooldown_s: float
    timeout_s: float
    # A plugin's calls run in a process of their own (rules/isolation.py): killable past their time
    # limit, and unable to end the service. perfguard's own rules run in threads.
    isolated: bool = False
    # Calls that outlived the time limit, by model: while one still runs the rule is not called again
    # for that model, so a hung plugin costs one thread, not one per run. Lives as long as this
    # built rule (the daemon's, until a reload).
    hung: dict[str, threading.Thread] = field(default_factory=dict, compare=False, repr=False)

    def applies_to(self, model: str) -> bool:
        return self.models is None or model in self.models

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "use": self.use, "label": self.label, "origin": self.origin,
            "models": sorted(self.models) if self.models is not None else None, "priority": self.priority,
            "cooldown": self.cooldown, "cooldown_s": self.cooldown_s, "timeout_s": self.timeout_s,
            "isolated": self.isolated,
            "params": self.rule.params.model_dump(mode="json"),
        }


class PluginError(Exception):
    """An entry point that does not give a usable rule class."""


def available_rules() -> list[RuleInfo]:
    """Every built-in rule, then every plugin entry point by name, each with its params or its error."""
    infos = [_info(cls, BUILTIN_ORIGIN) for cls in BUILTIN_RULES.values()]
    first: dict[str, str] = {}
    for ep in sorted(_plugin_entry_points(), key=lambda e: e.name):
        origin = _origin(ep)
        if ep.name in BUILTIN_RULES:
            error = f"shadowed: a built-in rule is named {ep.name!r} and is the one used; rename the entry point"
            infos.append(RuleInfo(ep.name, origin, error=error))
            continue
        if ep.name in first:
            error = f"name clash: {first[ep.name]} also provides {ep.name!r} and is the one used"
            infos.append(RuleInfo(ep.name, origin, error=error))
            continue
        first[ep.name] = origin
        try:
            infos.append(_info(load_plugin(ep), origin))
        except PluginError as exc:
            infos.append(RuleInfo(ep.name, origin, error=str(exc)))
    return infos


def configured_rules(config: Config) -> list[ConfiguredRule]:
    """One built rule per `[[rules]]` entry, in config order; ConfigError if any entry is unusable
    (`load_config` has normally refused such a config already)."""
    built, problems = _build(config)
    if problems:
        raise ConfigError(problems)
    return built


def validate_rules(config: Config) -> list[str]:
    """What is wrong with the config's rules, one line each naming the field (`rules[0].params.x: ...`)."""
    return _build(config)[1]


def load_plugin(ep: EntryPoint) -> type[Rule]:
    """The rule class an entry point names, checked against the contract; PluginError otherwise."""
    try:
        cls = ep.load()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a plugin's import may fail in any way
        raise PluginError(f"cannot import {ep.value}: {type(exc).__name__}: {exc}") from None
    if not (inspect.isclass(cls) and issubclass(cls, Rule)):
        raise PluginError(f"{ep.value} is not a subclass of rules.api.Rule")
    if inspect.isabstract(cls):
        raise PluginError(f"{ep.value} does not implement evaluate()")
    if getattr(cls, "name", None) != ep.name:
        raise PluginError(f"{ep.value}.name is {getattr(cls, 'name', None)!r}; it must match the entry point name")
    if not isinstance(getattr(cls, "description", None), str):
        raise PluginError(f"{ep.value} has no description")
    if not (inspect.isclass(cls.Params) and issubclass(cls.Params, RuleParams)):
        raise PluginError(f"{ep.value}.Params is not a subclass of rules.api.RuleParams")
    return cls


def _build(config: Config) -> tuple[list[ConfiguredRule], list[str]]:
    classes, plugin_names = _classes({entry.use for entry in config.rules})
    uses = [entry.use for entry in config.rules]
    built: list[ConfiguredRule] = []
    problems: list[str] = []
    for i, entry in enumerate(config.rules):
        found = classes.get(entry.use)
        if found is None:
            problems.append(f"rules[{i}].use: {_unknown(entry.use, plugin_names)}")
            continue
        if isinstance(found, str):
            problems.append(f"rules[{i}].use: rule {entry.use!r} cannot be used: {found}")
            continue
        cls, origin = found
        try:
            # As JSON: the values come from TOML text, so a TOML array may fill a tuple and a string
            # an enum, while strictness still refuses `true` for a number.
            params = cls.Params.model_validate_json(json.dumps(entry.params, default=str))
        except ValidationError as exc:
            problems += [f"rules[{i}].params{_loc(e['loc'])}: {_message(e, cls.Params)}"
                         for e in exc.errors(include_url=False)]
            continue
        try:
            rule = cls(params)
        except Exception as exc:  # noqa: BLE001 - a plugin's constructor is its own code
            problems.append(f"rules[{i}].use: rule {entry.use!r} could not be set up: {type(exc).__name__}: {exc}")
            continue
        occurrence = uses[: i + 1].count(entry.use)
        built.append(ConfiguredRule(
            index=i, use=entry.use, label=entry.use if occurrence == 1 else f"{entry.use}#{occurrence}",
            rule=rule, origin=origin, models=frozenset(entry.models) if entry.models is not None else None,
            priority=entry.priority, cooldown=entry.cooldown, cooldown_s=entry.cooldown_s, timeout_s=entry.timeout_s,
            isolated=origin != BUILTIN_ORIGIN,
        ))
    return built, problems


def _classes(names: set[str]) -> tuple[dict[str, tuple[type[Rule], str] | str], set[str]]:
    """The rule class and origin of each name that exists (an error text for a broken plugin), and
    every plugin name seen (for did-you-mean hints). Entry points are read only for a name that is
    not a built-in, and loaded only when named."""
    found: dict[str, tuple[type[Rule], str] | str] = {
        name: (BUILTIN_RULES[name], BUILTIN_ORIGIN) for name in names if name in BUILTIN_RULES
    }
    if names <= set(found):
        return found, set()
    seen: set[str] = set()
    for ep in _plugin_entry_points():
        seen.add(ep.name)
        if ep.name not in names or ep.name in found:
            continue  # not asked for; or the built-in, or the first plugin of that name, wins
        try:
            found[ep.name] = (load_plugin(ep), _origin(ep))
        except PluginError as exc:
            found[ep.name] = str(exc)
    return found, seen


def _unknown(name: str, plugins: set[str]) -> str:
    choices = sorted(set(BUILTIN_RULES) | plugins)
    hint = difflib.get_close_matches(name, choices, n=1)
    if hint:
        return f"unknown rule {name!r}; did you mean {hint[0]!r}?"
    return f"unknown rule {name!r}; available: {', '.join(choices)}"


def _plugin_entry_points() -> list[EntryPoint]:
    try:
        return list(entry_points(group=ENTRY_POINT_GROUP))
    except Exception:
        log.exception("cannot read the %s entry points; plugins are ignored", ENTRY_POINT_GROUP)
        return []


def _origin(ep: EntryPoint) -> str:
    dist = ep.dist
    if dist is None:
        return "unknown distribution"
    return f"{dist.name} {dist.version}"


def _info(cls: type[Rule], origin: str) -> RuleInfo:
    params = tuple(_param(name, field) for name, field in cls.Params.model_fields.items())
    return RuleInfo(cls.name, origin, cls.description, params)


def _param(name: str, field: FieldInfo) -> ParamInfo:
    required = field.is_required()
    default = None if required else to_jsonable_python(field.get_default(call_default_factory=True))
    return ParamInfo(name, _type_name(field.annotation), default, required, field.description or "")


def _type_name(annotation: Any) -> str:
    """A type as a person reads it: `list[str] | None`, validators and other metadata left out."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (Union, UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', repr(origin))}[{', '.join(_type_name(arg) for arg in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return repr(annotation).replace("typing.", "")


def _loc(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _message(error: Any, params: type[RuleParams]) -> str:
    if error["type"] == "extra_forbidden":
        allowed = sorted(params.model_fields)
        hint = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1)
        if hint:
            return f"unknown key; did you mean {hint[0]!r}?"
        if not allowed:
            return "unknown key; this rule takes no params"
        return f"unknown key; expected one of: {', '.join(allowed)}"
    if error["type"] == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
