"""Run parameters: one schema per job kind, the single source of their names, types, ranges and defaults.

Each job kind declares a :class:`ParamSchema` next to its executor and registers it with its
:class:`~analysis.jobs.JobKind`; :func:`analysis.services.runs.run_start` validates every run's parameters
through it, whoever starts the run (a site form, a management command, the API, the demo). The forms and the
commands take their defaults, bounds and choices from the same schema (:func:`form_field`,
:func:`add_argument`), and the API lists them (:meth:`ParamSchema.describe`).

Rules, the same for every kind: unknown keys are refused; a required key must be given; ``None`` stands for
"not given" (the default applies); values are never coerced across types (``"5"`` is not an integer, ``1`` is
not ``True``, a string is not a list), except that an integer is a number where a float is expected. Errors
name the parameter. This module is Django-free apart from :func:`form_field`, which imports Django's forms when
called.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from analysis.jobs import RunInputError

REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()
"""The default of a parameter that must be given."""

SEED_MAX = 2**31 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SLUG = r"[-a-zA-Z0-9_]+"
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


class ParamsError(RunInputError):
    """Parameters a schema refuses: ``errors`` maps each parameter at fault to a readable message."""

    def __init__(self, errors: Mapping[str, str]):
        self._errors = dict(errors)
        super().__init__(
            "; ".join(f"{name}: {message}" for name, message in self._errors.items()), field=next(iter(self._errors))
        )

    @property
    def errors(self) -> dict[str, str]:
        return dict(self._errors)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"{'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '≥'} {_number(low)}"
    return f"{'<' if high_open else '≤'} {_number(high)}"


@dataclass(frozen=True)
class Param:
    """One parameter: its ``type`` (int, float, bool or str; of each element when ``many``), default, and bounds.

    ``low``/``high`` bound numbers (``low_open``/``high_open`` exclude the bound itself); ``choices`` lists the
    allowed values; ``pattern`` (a full-match regex) and ``max_length`` bound texts, which are stripped, never hold
    control characters, and are empty only where ``blank`` allows. ``many`` makes it a list of
    such values with ``min_items``..``max_items`` entries; ``unique_sorted`` stores a list as its sorted set.
    ``nullable`` allows ``None`` as a value (it is then also the default).
    """

    type: type
    default: Any = REQUIRED
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    pattern: str | None = None
    max_length: int = 200
    blank: bool = False
    many: bool = False
    min_items: int = 0
    max_items: int = 64
    unique_sorted: bool = False
    nullable: bool = False

    def __post_init__(self):
        if self.type not in _TYPE_WORDS:
            raise TypeError(f"a parameter is int, float, bool or str, not {self.type!r}")
        if self.type is int and (self.low is None or self.high is None) and self.choices is None:
            raise TypeError("an integer parameter needs both bounds (seeds: 0..SEED_MAX)")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        """``"an integer in [1, 256]"``, ``"a list of numbers in [0, 1]"``, ``"one of anchored, plain"``."""
        if self.choices is not None:
            what = "one of " + ", ".join(str(choice) for choice in self.choices)
        else:
            what = _TYPE_WORDS[self.type]
            if self.low is not None or self.high is not None:
                what += (
                    " "
                    + ("in " if self.low is not None and self.high is not None else "")
                    + _interval(self.low, self.high, self.low_open, self.high_open)
                )
            if self.pattern == SLUG:
                what += " of letters, digits, '-' and '_'"
        if self.many:
            items = f"{self.min_items} to {self.max_items}" if self.min_items else f"at most {self.max_items}"
            what = f"a list of {items} values, each {what}"
        return what + (" or null" if self.nullable else "")

    def clean(self, value: Any) -> Any:
        """The value as stored; raises ValueError with a readable message (without the parameter's name)."""
        if value is None and self.nullable:
            return None
        if not self.many:
            return self._clean_one(value)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"must be {self.describe()}, not {_shown(value)}")
        if not self.min_items <= len(value) <= self.max_items:
            raise ValueError(f"must be {self.describe()} ({len(value)} given)")
        items = [self._clean_one(item) for item in value]
        return sorted(set(items)) if self.unique_sorted else items

    def _clean_one(self, value: Any) -> Any:
        expected = f"must be {self.describe()}, not {_shown(value)}"
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(expected)
            return value
        if self.type is str:
            if not isinstance(value, str):
                raise ValueError(expected)
            value = value.strip()
            if len(value) > self.max_length:
                raise ValueError(f"must be at most {self.max_length} characters long")
            if _CONTROL.search(value):
                raise ValueError("must not contain control characters")
            if not value and not self.blank:
                raise ValueError("must not be empty")
            if self.pattern is not None and not re.fullmatch(self.pattern, value):
                raise ValueError(expected)
        elif isinstance(value, bool) or not isinstance(value, (int, float) if self.type is float else int):
            raise ValueError(expected)
        elif self.type is float:
            try:
                value = float(value)
            except OverflowError:
                raise ValueError(f"must be {self.describe()}; {_shown(value)} is too large") from None
            if not math.isfinite(value):
                raise ValueError(expected)
        if self.choices is not None and value not in self.choices:
            raise ValueError(expected)
        if self.type in (int, float) and not _within(value, self):
            raise ValueError(expected)
        return value


def _within(value: float, param: Param) -> bool:
    if param.low is not None and (value < param.low or (param.low_open and value == param.low)):
        return False
    return not (param.high is not None and (value > param.high or (param.high_open and value == param.high)))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class ParamSchema:
    """The parameters of one job kind, in order; ``rules(params)`` checks what involves several of them (and may
    normalise them in place), raising :class:`ParamsError`."""

    fields: dict[str, Param]
    rules: Callable[[dict[str, Any]], None] | None = None
    _defaults: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(
            self, "_defaults", {name: param.default for name, param in self.fields.items() if not param.required}
        )

    def __getitem__(self, name: str) -> Param:
        return self.fields[name]

    @property
    def defaults(self) -> dict[str, Any]:
        """A fresh copy of the defaults of the optional parameters (the kind's ``*_DEFAULTS``)."""
        return {name: list(value) if isinstance(value, list) else value for name, value in self._defaults.items()}

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The complete parameters: each given value checked and stored in its canonical form, the defaults
        filled in. Raises :class:`ParamsError` naming every parameter at fault."""
        if not isinstance(params, Mapping):
            raise ParamsError({"params": f"must be an object of named parameters, not {_shown(params)}"})
        errors = {
            str(name): "not a parameter of this kind, which takes " + ", ".join(self.fields)
            for name in params
            if name not in self.fields
        }
        cleaned: dict[str, Any] = {}
        defaults = self.defaults
        for name, param in self.fields.items():
            value = params.get(name)
            if value is None and param.required:
                errors[name] = "is required"
                continue
            try:
                cleaned[name] = param.clean(defaults[name] if value is None else value)
            except ValueError as error:
                errors[name] = str(error)
        if errors:
            raise ParamsError(errors)
        if self.rules is not None:
            self.rules(cleaned)
        return cleaned

    def describe(self) -> str:
        """One line per parameter: name, what it takes, its default (for the API's documentation)."""
        lines = []
        for name, param in self.fields.items():
            default = "required" if param.required else f"default {param.default!r}"
            lines.append(f"{name}: {param.describe()}; {default}" + (f". {param.help}" if param.help else ""))
        return "\n".join(lines)


# -- interfaces: the site's forms and the management commands take the schema's definitions ------------------


def form_field(schema: ParamSchema, name: str, **kwargs: Any):
    """A Django form field for ``schema[name]`` (a single value, not a list): its initial value, bounds, choices
    and pattern come from the schema; ``kwargs`` add the label, help text, widget, ``choice_labels``. What a form
    field cannot say (an open interval, rules across parameters) the schema checks when the run starts, and
    :class:`~analysis.views.starting.StartRunFormMixin` shows its error at the field."""
    from django import forms  # here, not at the top: the schemas (this module) stay importable without Django

    param = schema[name]
    if param.many:
        raise TypeError(f"{name} is a list: build its form field by hand and let the schema check it")
    options: dict[str, Any] = {"required": param.required and param.type is not bool}
    if not param.required:
        options["initial"] = param.default
    if param.choices is not None:
        labels = kwargs.pop("choice_labels", {})
        return forms.ChoiceField(
            choices=[(choice, labels.get(choice, choice)) for choice in param.choices], **options, **kwargs
        )
    if param.type is bool:
        return forms.BooleanField(required=False, initial=param.default, **kwargs)
    if param.type is str:
        if param.pattern is not None:
            from django.core.validators import RegexValidator

            options["validators"] = [RegexValidator(f"^{param.pattern}\\Z", f"Must be {param.describe()}.")]
        return forms.CharField(max_length=param.max_length, **options, **kwargs)
    bounds = {}
    if param.low is not None and not param.low_open:
        bounds["min_value"] = param.low
    if param.high is not None and not param.high_open:
        bounds["max_value"] = param.high
    field_class = forms.IntegerField if param.type is int else forms.FloatField
    return field_class(**options, **bounds, **kwargs)


def add_argument(parser: argparse.ArgumentParser, schema: ParamSchema, name: str, *flags: str, **kwargs: Any):
    """``--the-name`` for ``schema[name]`` on a command's parser, typed, with the schema's default and choices
    (a list takes several values; a boolean that defaults to false is a switch). The run's start function then
    validates the value through the schema."""
    param = schema[name]
    flags = flags or (f"--{name.replace('_', '-')}",)
    options: dict[str, Any] = {"dest": name, "help": kwargs.pop("help", param.help) or None}
    if param.type is bool and param.default is False:
        return parser.add_argument(*flags, action="store_true", **options, **kwargs)
    if param.type is bool:
        return parser.add_argument(
            *flags, action=argparse.BooleanOptionalAction, default=param.default, **options, **kwargs
        )
    options["type"] = param.type
    if param.required:
        options["required"] = True
    else:
        options["default"] = param.default
    if param.choices is not None:
        options["choices"] = param.choices
    if param.many:
        options["nargs"] = "+"
    return parser.add_argument(*flags, **{**options, **kwargs})


def integers(low: int, high: int, default: Any = REQUIRED, **kwargs: Any) -> Param:
    return Param(int, default, low=low, high=high, **kwargs)


def seed(default: int = 0, **kwargs: Any) -> Param:
    return Param(int, default, low=0, high=SEED_MAX, **kwargs)


def name(default: Any = REQUIRED, *, slug: bool = False, **kwargs: Any) -> Param:
    """A name of something (network, dataset, layer); ``slug`` for a new name the run creates."""
    return Param(str, default, pattern=SLUG if slug else None, max_length=100 if slug else 200, **kwargs)


def choice(values: Iterable[Any], default: Any = REQUIRED, **kwargs: Any) -> Param:
    values = tuple(values)
    return Param(type(values[0]), default, choices=values, **kwargs)


def fraction(default: Any = REQUIRED, **kwargs: Any) -> Param:
    """A number strictly between 0 and 1 (a quantile, a share of images)."""
    return Param(float, default, low=0, high=1, low_open=True, high_open=True, **kwargs)
