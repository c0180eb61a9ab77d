"""Run files: a command's options in a TOML file (``--config run.toml``), and the settings each artifact keeps.

A run file sets options by name, flat (``lr = 0.001``, ``max-codes = 300``; snake_case or the command line's
dashes). It sits between the preset and the command line: defaults < ``--preset`` < the run file < options
given on the command line. Every codebook, encode and finetune artifact keeps its stage's resolved settings as
``run.toml`` (:func:`write`), so ``--config <store>/<stage>/<key>/run.toml`` repeats that run: a cache hit.
"""

import difflib
import json
import tomllib
import typing
from dataclasses import fields
from pathlib import Path
from typing import Optional

from ..errors import InputError
from .config import PRESETS

# What each annotation takes from TOML: (the check, how the error names it, the conversion).
KINDS = {
    bool: (lambda v: isinstance(v, bool), "true or false", bool),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number", int),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number", float),
    str: (lambda v: isinstance(v, str), "a string", str),
    Path: (lambda v: isinstance(v, str), "a path (a string)", Path),
}


def read(path: Path, options: dict, command: str) -> dict:
    """The options the run file at ``path`` sets, by field name, converted to their types.

    ``options``: the command's option names and annotations; ``command``: its name, for the errors. A missing or
    unreadable file, invalid TOML, a name the command lacks and a value of another type are an
    :class:`~dre_pipeline.errors.InputError` of one line.
    """
    if not path.is_file():
        raise InputError(f"--config {path}: no such file")
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as error:
        raise InputError(f"--config {path} cannot be read: {error.strerror}") from None
    except ValueError as error:  # TOMLDecodeError, or bytes that are not UTF-8
        raise InputError(f"--config {path} is not valid TOML: {error}") from None
    settings = {}
    for written, value in table.items():
        name = written.replace("-", "_")
        if isinstance(value, dict):
            raise InputError(f"{path}: [{written}] is a section; a run file holds options flat, as name = value")
        if name not in options:
            close = difflib.get_close_matches(name, options, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InputError(f"{path}: {command} has no option {written!r}{hint}")
        if name in settings:
            raise InputError(f"{path}: {name} is given twice (as {name} and {name.replace('_', '-')})")
        settings[name] = converted(path, name, value, options[name])
    return settings


def converted(path: Path, name: str, value, annotation):
    """``value`` as the option ``name`` of type ``annotation`` (``Optional[X]``: X, since TOML has no null)."""
    kind = next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)
    ok, expected, convert = KINDS[kind]
    if not ok(value):
        raise InputError(f"{path}: {name} must be {expected}, got {value!r}")
    return convert(value)


def apply(path: Optional[Path], values: dict, given: set, options: dict, command: str) -> tuple:
    """(``values`` with the run file's settings where the command line left an option at its default, the names
    now given either way); ``given``: the names the command line gave. No file (None): the values as they are."""
    if path is None:
        return values, given
    settings = {name: value for name, value in read(path, options, command).items() if name not in given}
    return {**values, **settings}, given | set(settings)


def with_preset(values: dict, preset: str, given: set) -> dict:
    """``values`` with the preset's settings where neither the command line nor the run file gave an option."""
    if preset != "none" and preset not in PRESETS:
        raise InputError(f"--preset must be one of none, {', '.join(PRESETS)}, got {preset!r}")
    return {**values, **{k: v for k, v in PRESETS.get(preset, {}).items() if k in values and k not in given}}


def write(path: Path, cfg) -> None:
    """Every field of the config ``cfg`` as a run file at ``path``, those at None left out (TOML has no null)."""
    lines = [f"{f.name} = {toml_value(getattr(cfg, f.name))}" for f in fields(cfg) if getattr(cfg, f.name) is not None]
    path.write_text("\n".join(lines) + "\n")


def toml_value(value) -> str:
    """A bool, int, float or str as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # inf and nan read back as TOML's inf and nan
    # a JSON string is a TOML basic string, once DEL, which JSON leaves bare and TOML does not, is escaped
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
