"""One source of truth: every config option composes and builds, presets inherit, documented commands compose."""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import models
import tasks
import variants
from runners.hydra_glue.configs import CONF_DIR, TASKS, register_configs

REPO = Path(__file__).resolve().parents[1]
PRESET_GROUPS = ["model", "optim", "hardware", "sweep"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def composed(*overrides: str, name: str = "config", hydra_config: bool = False):
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra_config)


@pytest.mark.parametrize("name", variants.names())
def test_every_variant_is_an_attention_option_with_its_own_defaults(name):
    cfg = composed(f"attention={name}")
    hparams = OmegaConf.to_container(cfg.attention)
    assert hparams.pop("name") == name
    assert hparams == variants.hyperparameters(name)
    variants.build(name, heads=2, dim_head=8, max_seq_len=max(cfg.sweep.seq_lens), **hparams)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_is_an_option_and_instantiates_with_the_class_defaults(name):
    cfg = composed(f"task={name}", "seed=7", name="train")
    task = hydra.utils.instantiate(cfg.task)
    assert isinstance(task, tasks.GeneratedTask) and task.seed == 7  # the seed follows the run's
    signature = inspect.signature(type(task).__init__).parameters
    for key, value in cfg.task.items():
        if key in signature and key != "seed":
            assert value == signature[key].default, f"task/{name}.{key}"


def test_every_task_class_has_an_option():
    classes = {cls for cls in vars(tasks).values() if isinstance(cls, type) and issubclass(cls, tasks.GeneratedTask)}
    assert classes - {tasks.GeneratedTask} == set(TASKS.values())


def test_model_small_is_the_skeletons_own_defaults():
    small = OmegaConf.to_container(composed("model=small").model)
    signature = inspect.signature(models.Transformer.__init__).parameters
    assert small == {key: signature[key].default for key in small}


@pytest.mark.parametrize("group", PRESET_GROUPS)
def test_presets_of_a_group_share_one_set_of_keys(group):
    keys = {option: set(composed(f"{group}={option}")[group]) for option in options(group)}
    first = next(iter(keys.values()))
    assert all(k == first for k in keys.values()), keys


@pytest.mark.parametrize("option", options("model"))
def test_every_model_preset_builds_the_skeleton(option):
    model = OmegaConf.to_container(composed(f"model={option}").model)
    models.Transformer(vocab_size=8, num_outputs=2, max_seq_len=32, attention={"name": "full"}, **model)


@pytest.mark.parametrize("group", PRESET_GROUPS)
def test_derived_presets_state_only_what_differs_from_their_base(group):
    """A preset that inherits through the defaults list must not repeat a value it inherits."""
    for option in options(group):
        raw = OmegaConf.load(Path(CONF_DIR) / group / f"{option}.yaml")
        bases = [d for d in raw.get("defaults", []) if d != "_self_"]
        for base in bases:
            inherited = OmegaConf.to_container(composed(f"{group}={base}")[group])
            repeated = {k: v for k, v in raw.items() if k != "defaults" and inherited.get(k) == v}
            assert not repeated, f"{group}/{option} repeats {repeated} from {base}"


def documented_commands(module: str) -> list[list[str]]:
    """Every ``python -m runners.MODULE ...`` line in the README, the docs and the module's docstring, as overrides."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), REPO / "runners" / f"{module}.py"]
    text = "\n".join(page.read_text() for page in pages)
    text = text.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        match = re.match(rf"\s*python -m runners\.{module}\b(.*)", line)  # whole lines: code blocks, docstrings
        if not match:
            continue
        words = shlex.split(match.group(1).split("#")[0])
        overrides = []
        for word in words:
            if word == "-m" or "=" not in word:
                continue
            key, value = word.split("=", 1)
            if "," in value and not value.startswith(("[", "{")):
                value = value.split(",")[0]  # a multirun sweeps values; each must compose
            overrides.append(f"{key}={value}")
        commands.append(overrides)
    return commands


@pytest.mark.parametrize(("module", "name"), [("sweep", "config"), ("train", "train"), ("maps", "maps")])
def test_every_documented_command_line_composes(module, name):
    commands = documented_commands(module)
    assert len(commands) >= 3
    for overrides in commands:
        composed(*overrides, name=name, hydra_config=True)


def test_ci_runs_the_readmes_install_and_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    lines = [line.split("#")[0].strip() for line in readme.splitlines()]
    test_line = next(line for line in lines if line.endswith("&& python -m pytest"))
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    install, test = (part.strip() for part in test_line.split("&&"))
    assert install in ci_lines and test in ci_lines
    assert ci_lines.index(install) < ci_lines.index(test)


def test_the_installed_packages_import_from_outside_the_checkout(tmp_path):
    """``python -m pytest`` puts the checkout on sys.path; a broken install must still fail somewhere."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import models, runners.sweep, tasks, variants; print(variants.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()).is_relative_to(REPO / "variants")


def test_no_source_file_is_ignored_by_git():
    """A .gitignore pattern that also matches a code folder (``results/`` once hid ``runners/results/``)."""
    sources = [
        str(p.relative_to(REPO))
        for d in ("runners", "variants", "tasks", "models", "tests", "conf")
        for p in (REPO / d).rglob("*")
        if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts
    ]
    ignored = subprocess.run(["git", "check-ignore", *sources], cwd=REPO, capture_output=True, text=True).stdout
    assert len(sources) > 40 and ignored.split() == []
