"""The docs' reference pages, generated from their sources: every config key from ``conf/`` and the code,
every command's flags from its parser, every variant from the registry.

Nothing here is pasted: the YAML's own comments are the keys' descriptions, each argparse ``help`` is the
flag's, each variant module's docstring is its section. ``docs/gen_reference.py`` writes these pages when
MkDocs builds the site, and ``tests/test_docs.py`` checks that every key and flag is in them.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

import variants
from runners.hydra_glue.configs import CONF_DIR, TASKS, attention_config, task_config

CONF = Path(CONF_DIR)
REPO = CONF.parent
HYDRA_COMMANDS = {"sweep": "config", "train": "train", "maps": "maps"}  # command -> its primary config in conf/
ARGPARSE_COMMANDS = ("advise", "bench", "memory_check", "report")  # each module has build_parser()


@dataclass
class YamlKey:
    """One key of a YAML file: its dotted path, its value as written (empty for a block) and its comment."""

    path: str
    value: str
    comment: str
    merges: str | None = None  # ``<<: *anchor``: the path of the key whose keys it takes, except its own


def split_comment(line: str) -> tuple[str, str]:
    """``'a: 1  # why'`` -> ``('a: 1', 'why')``; a ``#`` inside quotes is not a comment."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index].rstrip(), line[index + 1 :].strip()
    return line.rstrip(), ""


def yaml_keys(path: Path) -> tuple[str, list[tuple[str, str]], list[YamlKey]]:
    """A conf/ file's leading comment, its defaults list and its keys with their comments.

    A comment on the lines under a key, indented, continues that key's; a comment block at the left margin
    between keys introduces the next key.
    """
    header: list[str] = []
    defaults: list[tuple[str, str]] = []  # (entry, its comment)
    keys: list[YamlKey] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    in_defaults = False
    anchors: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        code, comment = split_comment(raw)
        indent = len(raw) - len(raw.lstrip())
        if not code.strip():
            if not comment:
                pending = []
                continue
            if not keys and not defaults and indent == 0:
                header.append(comment)
            elif indent > 0 and keys:
                keys[-1].comment = f"{keys[-1].comment} {comment}".strip()
            else:
                pending.append(comment)
            continue
        stripped = code.strip()
        if stripped.startswith("- "):
            if in_defaults:
                defaults.append((stripped[2:], comment))
            continue
        merge = re.match(r"<<:\s*\*(\S+)", stripped)
        if merge and keys:
            keys[-1].merges = anchors.get(merge.group(1))
            continue
        match = re.match(r"([\w.@/-]+):\s*(.*)$", stripped)
        if not match:
            continue
        key, value = match.groups()
        if indent == 0:
            in_defaults = key == "defaults"
            if in_defaults:
                continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([*(name for _, name in stack), key])
        stack.append((indent, key))
        anchor = re.match(r"&(\S+)\s*(.*)$", value)
        if anchor:
            anchors[anchor.group(1)] = dotted
            value = anchor.group(2)
        keys.append(YamlKey(dotted, value, " ".join([*pending, comment]).strip()))
        pending = []
    return " ".join(header), defaults, keys


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def code(value: Any) -> str:
    return f"`{value}`" if value not in ("", None) else ""


def yaml_section(path: Path, prefix: str) -> list[str]:
    """One conf/ file: what it is, what it selects, then a table of its keys (``prefix``: its package)."""
    header, defaults, keys = yaml_keys(path)
    relative = path.relative_to(REPO).as_posix()
    lines = [f"### `{relative}`", ""]
    if header:
        lines += [header, ""]
    if defaults:
        selects = (code(entry) + (f" ({comment})" if comment else "") for entry, comment in defaults)
        lines += ["Selects: " + "; ".join(selects), ""]
    if keys:
        lines += ["| key | value | what |", "| --- | --- | --- |"]
        for key in keys:
            name = f"{prefix}.{key.path}" if prefix else key.path
            comment = key.comment
            if key.merges:
                merged = f"{prefix}.{key.merges}" if prefix else key.merges
                comment = f"{comment} The keys of `{merged}`, except those below.".strip()
            lines.append(f"| `{name}` | {cell(code(key.value))} | {cell(comment)} |")
        lines.append("")
    return lines


def config_groups() -> dict[str, list[Path]]:
    """The YAML config groups of conf/: group -> its option files."""
    return {folder.name: sorted(folder.glob("*.yaml")) for folder in sorted(CONF.iterdir()) if folder.is_dir()}


def config_reference() -> str:
    """The configuration page: the commands' configs, every YAML group's options, the generated groups."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `conf/` and the code when the site is built (`runners/reference.py`): each key's",
        "description is its YAML comment. Override any key on the command line, `key=value`; select an option of",
        "a group with `group=option`. `python -m runners.sweep --cfg job` prints the composed config.",
        "",
        "## Commands' configs",
        "",
    ]
    for command, name in HYDRA_COMMANDS.items():
        lines += [f"`python -m runners.{command}` composes `conf/{name}.yaml`.", ""]
        lines += yaml_section(CONF / f"{name}.yaml", "")
    for group, files in config_groups().items():
        lines += [f"## `{group}`", ""]
        for path in files:
            lines += yaml_section(path, group if group != "launcher" else "")
    lines += [
        "## `attention` (generated from the registry)",
        "",
        "`attention=NAME` selects a variant with its own defaults; `attention.KEY=VALUE` overrides one. The same",
        "options are `cross_attention=NAME` for the variants that can cross-attend. See [Variants](variants.md).",
        "",
        "| option | hyperparameters and defaults |",
        "| --- | --- |",
    ]
    for name in variants.names():
        hparams = {k: v for k, v in attention_config(name).items() if k != "name"}
        shown = ", ".join(f"`{k}={v}`" for k, v in hparams.items()) or "none"
        lines.append(f"| `{name}` | {cell(shown)} |")
    lines += [
        "",
        "## `task` (generated from the task classes)",
        "",
        "| option | arguments and defaults |",
        "| --- | --- |",
    ]
    for name in TASKS:
        arguments = {k: v for k, v in task_config(name).items() if k not in ("_target_",)}
        shown = ", ".join(f"`{k}={v}`" for k, v in arguments.items())
        lines.append(f"| `{name}` | {cell(shown)} |")
    return "\n".join(lines) + "\n"


def parser_of(command: str) -> argparse.ArgumentParser:
    return importlib.import_module(f"runners.{command}").build_parser()


def flag_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| flag | default | what |", "| --- | --- | --- |"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = ", ".join(f"`{flag}`" for flag in action.option_strings) or f"`{action.dest}` (positional)"
        default = "" if action.default in (None, False, argparse.SUPPRESS) else code(action.default)
        what = (action.help or "").replace("%%", "%")
        if action.choices:
            what += f" (one of {', '.join(map(str, action.choices))})"
        if action.required:
            what += " (required)"
        rows.append(f"| {name} | {cell(default)} | {cell(what)} |")
    return rows


def cli_reference() -> str:
    """The commands page: the Hydra commands and every argparse command's flags, from its parser."""
    lines = [
        "# Command reference",
        "",
        "Generated from the code when the site is built (`runners/reference.py`).",
        "",
        "## Hydra commands",
        "",
        "These take `key=value` overrides of their config (see the [configuration reference](config.md)),",
        "`-m` for a multirun over comma-separated values, and Hydra's own flags (`--help`, `--cfg job`).",
        "",
        "| command | config | what |",
        "| --- | --- | --- |",
    ]
    for command, name in HYDRA_COMMANDS.items():
        module = importlib.import_module(f"runners.{command}")
        summary = (inspect.getdoc(module) or "").split("\n\n")[0].replace("\n", " ")
        lines.append(f"| `python -m runners.{command}` | `conf/{name}.yaml` | {cell(summary)} |")
    for command in ARGPARSE_COMMANDS:
        parser = parser_of(command)
        lines += ["", f"## `python -m runners.{command}`", "", (parser.description or "").replace("\n", " "), ""]
        lines += flag_rows(parser)
    return "\n".join(lines) + "\n"


def rst_to_markdown(text: str) -> str:
    """Docstring markup to markdown: ``code`` to `code`, :role:`x` to `x`."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def tests_naming(name: str) -> list[str]:
    """The test files that name a variant, beside the contract tests every variant gets."""
    pattern = re.compile(rf"[\"']{re.escape(name)}[\"']")
    return sorted(p.name for p in (REPO / "tests").glob("test_*.py") if pattern.search(p.read_text()))


def variants_reference() -> str:
    """The variants page: one section per registered variant, from its module and class docstrings and flags."""
    lines = [
        "# Variants",
        "",
        "Generated from the registry when the site is built (`runners/reference.py`): each section is the",
        "variant module's docstring, its capability flags and its hyperparameters. Every variant passes the",
        "contract tests (`tests/test_contract.py`: shapes, finiteness at 4096 tokens, gradients, causality,",
        "padding, dropout or its refusal, batch independence, determinism, bf16, a short training run); decoding",
        "variants also `tests/test_decoding.py` (token by token equals the parallel form), cross-attention ones",
        "`tests/test_cross.py`, and every variant's effective matrix reproduces its output (`tests/test_maps.py`).",
        "",
        "| variant | family | causal | padding mask | attention dropout | decodes | cross-attention | fixed length |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    yes = {True: "yes", False: "no"}
    for name in variants.names():
        cls = variants.get(name)
        lines.append(
            f"| [`{name}`](#{name}) | {cls.family} | {yes[cls.supports_causal]} | "
            f"{yes[cls.supports_mask]} | {yes[cls.supports_dropout]} | {yes[getattr(cls, 'supports_decoding', False)]} "
            f"| {yes[getattr(cls, 'supports_cross', False)]} | {yes[cls.needs_max_seq_len]} |"
        )
    for name in variants.names():
        cls = variants.get(name)
        module = inspect.getmodule(cls)
        lines += ["", f"## {name}", "", f"`{module.__name__}.{cls.__qualname__}`", ""]
        lines += [rst_to_markdown(inspect.getdoc(module) or ""), "", rst_to_markdown(inspect.getdoc(cls) or ""), ""]
        hparams = {k: v for k, v in attention_config(name).items() if k != "name"}
        if hparams:
            lines.append("Hyperparameters: " + ", ".join(f"`{k}={v}`" for k, v in hparams.items()) + ".")
        if cls.budget:
            knob, values = cls.budget
            lines.append(f"The maps probe's budget curve varies `{knob}` over {', '.join(map(str, values))}.")
        limits = []
        if not cls.supports_causal:
            limits.append("cannot be causal (refused at build time)")
        if not getattr(cls, "supports_decoding", False):
            limits.append("does not decode token by token")
        if not getattr(cls, "supports_cross", False):
            limits.append("cannot cross-attend")
        if cls.needs_max_seq_len:
            limits.append("needs `max_seq_len` (a fixed length)")
        if limits:
            lines.append("Limits: " + "; ".join(limits) + ".")
        named = tests_naming(name)
        if named:
            lines.append("Tests that name it: " + ", ".join(f"`tests/{t}`" for t in named) + ".")
    return "\n".join(lines) + "\n"


PAGES = {
    "reference/config.md": config_reference,
    "reference/commands.md": cli_reference,
    "reference/variants.md": variants_reference,
}


def leaf_keys(path: Path) -> list[str]:
    """Every leaf key of a conf/ file, dotted (the defaults list left out): what the reference must name."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    raw.pop("defaults", None)

    def walk(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict) and node:
            return [leaf for key, value in node.items() for leaf in walk(value, f"{prefix}{key}.")]
        return [prefix.rstrip(".")] if prefix else []  # an empty file names nothing

    return walk(raw, "")
