"""Render the command line's reference, docs/cli.md, from the typer app itself (``make docs``).

Every command, its help, and each argument and option with its type, default and help text, grouped
as the app groups them (its help panels), in the app's order. It reads typer's click command tree
(``typer.main.get_command``), never the help screen, so the page does not depend on the terminal's
width. ``tests/test_docs.py`` renders it again and fails when the file differs from the code.

    python docs/make_cli_md.py            # writes docs/cli.md
    python docs/make_cli_md.py --check    # exit 1 when docs/cli.md is out of date

The app is found through pyproject.toml's console script (``module:function``): its module's ``app``.
"""

import importlib
import inspect
import os
import sys
import tomllib
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "cli.md"
COMMAND = "make docs"

# Type names as click's parameter types spell them, whichever typer builds the parameters.
TYPE_NAMES = {str: "text", int: "integer", float: "float", bool: "boolean", Path: "path"}


def console_script() -> tuple:
    """(program name, the typer app) of pyproject.toml's one console script."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (program, target), = scripts.items()
    return program, importlib.import_module(target.split(":")[0]).app


def _panel(obj, fallback: str) -> str:
    panel = getattr(obj, "rich_help_panel", None)
    return panel if isinstance(panel, str) else fallback  # typer's unset panel is a placeholder object


def _text(help) -> str:
    """A help text as one paragraph per blank-line-separated block, as click rewraps it (up to a ``\\f``)."""
    blocks = inspect.cleandoc(help or "").split("\f")[0].split("\n\n")
    return "\n\n".join(" ".join(block.split()) for block in blocks if block.strip())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def _type(param) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)  # typer 0.2x's own click
    if annotation is not None:
        return TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return param.type.name  # click's parameter types


def _default(param) -> str:
    if getattr(param, "required", False):
        return "required"
    default = param.default
    if getattr(param, "is_flag", False):
        return "on" if default else "off"
    if default is None or default == "":
        return "–"
    return f"`{default}`"


def _name(param) -> str:
    if param.param_type_name == "argument":
        return param.name.upper()
    return " / ".join(f"`{opt}`" for opt in (*param.opts, *param.secondary_opts))


def _usage(program: str, name: str, command) -> str:
    pieces = [program, name, "[OPTIONS]"]
    for param in command.params:
        if param.param_type_name == "argument":
            piece = param.name.upper() + ("..." if param.nargs != 1 else "")
            pieces.append(piece if param.required else f"[{piece}]")
    return " ".join(pieces)


def render_command(program: str, name: str, command) -> list:
    lines = [f"### `{program} {name}`", "", "```", _usage(program, name, command), "```", "", _text(command.help), ""]
    groups: dict = {}
    arguments_first = sorted(command.params, key=lambda p: p.param_type_name != "argument")
    for param in arguments_first:
        if getattr(param, "hidden", False):
            continue
        fallback = "Arguments" if param.param_type_name == "argument" else "Options"
        groups.setdefault(_panel(param, fallback), []).append(param)
    for panel, params in groups.items():
        lines += [f"{panel}:", "", "| name | type | default | help |", "|---|---|---|---|"]
        lines += [f"| {_name(p)} | {_type(p)} | {_cell(_default(p))} | {_cell(_text(p.help))} |" for p in params]
        lines.append("")
    return lines


def render() -> str:
    """docs/cli.md's text for the app as the code defines it now."""
    program, app = console_script()
    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name=program)
    commands = [(name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]
    commands = [(name, c) for name, c in commands if not getattr(c, "hidden", False)]
    lines = [
        f"# `{program}` command reference",
        "",
        f"<!-- Generated from the typer app by docs/make_cli_md.py (`{COMMAND}`); edit the code, not this file. -->",
        "",
        _text(group.help),
        "",
        "Every command also takes `--help`. A flag shown as `--x / --no-x` is on or off by default as the "
        "table says. Bad input prints one `error:` line and exits with code 2.",
        "",
    ]
    panels: dict = {}
    for name, command in commands:
        panels.setdefault(_panel(command, "Commands"), []).append((name, command))
    for panel, members in panels.items():
        lines += [f"## {panel}", ""]
        lines += [f"- [`{name}`](#{program}-{name}): {_text(c.short_help or c.help).split('. ')[0].rstrip('.')}"
                  for name, c in members]
        lines.append("")
        for name, command in members:
            lines += render_command(program, name, command)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{os.path.relpath(TARGET, ROOT)} differs from the code: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {os.path.relpath(TARGET, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
