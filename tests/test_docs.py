"""The documentation against the code: the generated option reference is current, the README stays a front
page, and every relative link points at a file that exists."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)


def _generator():
    spec = importlib.util.spec_from_file_location("make_cli_md", ROOT / "docs" / "make_cli_md.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_what_the_app_defines():
    generator = _generator()
    rendered = generator.render()
    assert (ROOT / "docs" / "cli.md").read_text() == rendered, \
        f"docs/cli.md differs from the typer app: run `{generator.COMMAND}` and commit docs/cli.md"


def test_cli_reference_names_every_command_and_option():
    """The renderer reads the app rather than copying a list: a new option or command shows up by itself."""
    import typer

    program, app = _generator().console_script()
    group = typer.main.get_command(app)
    text = (ROOT / "docs" / "cli.md").read_text()
    for name, command in group.commands.items():
        assert f"### `{program} {name}`" in text
        section = text.split(f"### `{program} {name}`")[1].split("\n### ")[0]
        for param in command.params:
            shown = param.name.upper() if param.param_type_name == "argument" else f"`{param.opts[0]}`"
            assert f"| {shown} " in section, f"{name}: {shown} is missing"


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines: move detail into docs/"


def test_readme_names_the_command_ci_runs():
    """.ci/run runs `make test`; the README's test command is the same one."""
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", (ROOT / "README.md").read_text(), re.M)


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_relative_links_point_at_files_that_exist(page: Path):
    targets = [t.split("#")[0] for t in LINK.findall(page.read_text())
               if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
