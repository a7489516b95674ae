"""The docs stay true: every snippet runs or composes, every config key and flag is in the generated reference,
and the site builds with MkDocs in strict mode."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from runners import reference

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def blocks(language: str) -> list[tuple[str, str]]:
    """Every fenced code block of one language in the README and the docs: (page, code)."""
    found = []
    for page in PAGES:
        for match in re.finditer(rf"```{language}\n(.*?)```", page.read_text(), re.S):
            found.append((str(page.relative_to(REPO)), match.group(1)))
    return found


@pytest.mark.parametrize(("page", "code"), blocks("python"), ids=lambda value: str(value)[:40])
def test_every_python_snippet_runs(page, code, tmp_path):
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{page}:\n{code}\n{done.stderr[-2000:]}"


def argparse_command_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for _, code in blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            match = re.match(r"\s*(?:.*&& )?python -m runners\.(\w+)\b(.*)", line)
            if match and match.group(1) in reference.ARGPARSE_COMMANDS:
                lines.append((match.group(1), shlex.split(match.group(2).split(" #")[0])))
    return lines


def test_every_documented_argparse_command_parses():
    """The Hydra commands are composed by tests/test_configs.py; these are parsed by their own parsers."""
    lines = argparse_command_lines()
    assert {command for command, _ in lines} >= {"advise", "bench"}
    for command, words in lines:
        try:
            reference.parser_of(command).parse_args(words)
        except SystemExit:
            pytest.fail(f"python -m runners.{command} {shlex.join(words)} does not parse")


def named_in(section: list[str], dotted: str) -> bool:
    """A leaf is named by its own row, by an inline mapping's row that shows it, or through a YAML merge."""
    rows = {key: value for key, value in re.findall(r"^\| `([^`]+)` \| (.*?) \|", "\n".join(section), re.M)}
    comments = dict(re.findall(r"^\| `([^`]+)` \| .*? \| (.*) \|$", "\n".join(section), re.M))
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        ancestor, rest = ".".join(parts[:cut]), parts[cut:]
        if ancestor not in rows:
            continue
        if not rest or rest[-1] in rows[ancestor]:
            return True
        merged = re.search(r"The keys of `([^`]+)`", comments.get(ancestor, ""))
        if merged and named_in(section, ".".join([merged.group(1), *rest])):
            return True
    return False


def test_every_config_key_is_in_the_configuration_reference():
    files = [REPO / "conf" / f"{name}.yaml" for name in reference.HYDRA_COMMANDS.values()]
    files += [path for group in reference.config_groups().values() for path in group]
    missing = []
    for path in files:
        group = path.parent.name if path.parent.name not in ("conf", "launcher") else ""
        section = reference.yaml_section(path, group)
        for leaf in reference.leaf_keys(path):
            dotted = f"{group}.{leaf}" if group else leaf
            if not named_in(section, dotted):
                missing.append(f"{path.relative_to(REPO)}: {dotted}")
    assert not missing, missing
    page = reference.config_reference()
    assert all(f"### `{path.relative_to(REPO).as_posix()}`" in page for path in files)
    assert "## `attention`" in page and "## `task`" in page


def test_every_flag_of_every_command_is_in_the_commands_reference():
    with_parsers = sorted(p.stem for p in (REPO / "runners").glob("*.py") if ".parse_args(" in p.read_text())
    assert sorted(reference.ARGPARSE_COMMANDS) == with_parsers, "a command with flags is missing from the reference"
    page = reference.cli_reference()
    for command in reference.ARGPARSE_COMMANDS:
        for action in reference.parser_of(command)._actions:
            for flag in action.option_strings if action.dest != "help" else ():
                assert f"`{flag}`" in page, f"runners.{command} {flag}"
    for command in reference.HYDRA_COMMANDS:
        assert f"`python -m runners.{command}`" in page


def test_every_variant_has_a_section_in_the_variants_reference():
    import variants

    page = reference.variants_reference()
    assert all(f"\n## {name}\n" in page for name in variants.names())


def test_the_site_builds_in_strict_mode(tmp_path):
    """Broken links, anchors, pages missing from the nav: each is a warning, and --strict fails on it."""
    env = os.environ | {"DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "config" / "index.html").exists()
