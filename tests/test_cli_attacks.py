"""Adversarial use of the `las` command line: the help against docs/cli.md, odd characters in
paths and names (Rich markup), bad option values, unwritable logs and outputs, a missing
catalog, unreadable configs, and Ctrl-C during training."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from las_builder.cli import app
from las_builder.logs import log_json_to
from las_builder.security import install_log_redaction

ROOT = Path(__file__).resolve().parents[1]
CLI_DOC = ROOT / "docs" / "cli.md"
DEMO_RECIPE = ROOT / "recipes" / "demo.yaml"


def _one_line_error(output: str) -> str:
    """The CLI's error: one line starting with ``error:``, no traceback or Rich panel."""
    assert "Traceback" not in output and "╭" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every leaf command of the click group, by its words (``"world create"``)."""
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        words = (*prefix, name)
        if hasattr(command, "commands"):
            found.update(_commands(command, words))
        else:
            found[" ".join(words)] = command
    return found


def _names(params: list[Any]) -> set[str]:
    """Option spellings (``--out``, ``-o``, ``--no-suggest``) and argument metavars."""
    names: set[str] = set()
    for param in params:
        if isinstance(param, typer.core.TyperOption):
            names.update(param.opts + param.secondary_opts)
        else:
            names.add(param.metavar or param.name.upper())
    names.discard("--help")
    return names


def _documented(section: str) -> set[str]:
    """The options and arguments in the first column of a docs/cli.md option table."""
    names: set[str] = set()
    for cell in re.findall(r"^\| (`[^|]+) \|", section, flags=re.MULTILINE):
        names.update(re.findall(r"`([^`]+)`", cell))
    return names


def test_every_option_is_documented_and_every_documented_option_exists() -> None:
    """docs/cli.md's option tables and the commands' options agree, both ways, for every
    command and for the global options of `las` itself; each usage line shows every option."""
    root = typer.main.get_command(app)
    sections = {
        heading: body
        for heading, body in re.findall(
            r"^#+ (.+?)\n(.*?)(?=^#|\Z)", CLI_DOC.read_text(), flags=re.MULTILINE | re.DOTALL
        )
    }
    commands = _commands(root)
    assert {f"`las {name}`" for name in commands} <= set(sections), sorted(sections)
    for name, command in commands.items():
        section = sections[f"`las {name}`"]
        options = _names(command.params)
        assert options - {"DIRECTORY"} <= _documented(section), name  # no table: one argument
        assert _documented(section) <= options, name
        usage = set(re.findall(r"--[a-z-]+", section.split("```")[1]))
        assert {o for o in options if o.startswith("--")} - usage <= {"--no-detach"}, name
    global_options = {o for o in _names(root.params) if not o.endswith("-completion")}
    assert _documented(sections["Global options"]) == global_options


@pytest.fixture
def bracket_las(small_las: Path, tmp_path: Path) -> Path:
    """The session's small dataset behind a path with Rich closing tags: ``…/a[/b]``."""
    parent = tmp_path / "a["
    parent.mkdir()
    link = parent / "b]"
    link.symlink_to(small_las, target_is_directory=True)
    return link


def test_inspect_of_a_path_with_markup_characters(bracket_las: Path, tmp_path: Path) -> None:
    """`[/b]` in the dataset's path is text: it used to raise Rich's MarkupError (exit 1)
    after the report was written, and `[red]` vanished from the output."""
    result = CliRunner().invoke(
        app, ["inspect", str(bracket_las), "-n", "1", "-o", str(tmp_path / "report")]
    )
    assert result.exit_code == 0, result.output
    assert "MarkupError" not in result.output
    # the table's title wraps at its width: compare without white space
    assert f"{bracket_las}:24samples" in "".join(result.output.split())
    assert (tmp_path / "report" / "report.html").is_file()


def test_stats_prints_class_names_with_brackets_as_they_are(
    small_las: Path, tmp_path: Path
) -> None:
    """Class names come from the store's attributes: `[/x]` stopped `las stats` with a
    MarkupError, and a name such as `Water [bold]` lost its `[bold]`."""
    las = tmp_path / "las"
    shutil.copytree(small_las, las)
    meta_path = las / "las.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["taxonomy"][0]["name"] = "Water [/x] [bold]"
    meta_path.write_text(json.dumps(meta))
    args = ["stats", str(las), "-o", str(tmp_path / "stats")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})  # no wrapped cells
    assert result.exit_code == 0, result.output
    assert "Water [/x] [bold]" in result.output


def test_plan_prints_legend_names_with_brackets_as_they_are(
    served_world: dict, catalog_copy: Path, tmp_path: Path
) -> None:
    """The strata table shows the stratifying product's legend names (catalog YAML, e.g. from
    `las catalog add`): `[/x]` in one stopped `las plan` after the plan was written."""
    legend_path = catalog_copy / "labels" / "esa-cci-lc.yaml"
    legend = yaml.safe_load(legend_path.read_text())
    for cls in legend["classes"]:
        cls["name"] = f"[/x] c{cls['value']} [dim]"
    legend_path.write_text(yaml.safe_dump(legend, sort_keys=False))
    sets = [
        f"stac.url={served_world['stac_url']}",
        "sample.size_px=32",
        "sample.count=8",
        f"output.path={tmp_path / 'out'}",
    ]
    args = ["plan", str(DEMO_RECIPE), *(a for s in sets for a in ("--set", s))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"\[/x\] c\d+ \[dim\]", result.output), result.output
    assert "planned 8 samples" in result.output


@pytest.mark.parametrize("kind", ["folder", "file in the way"])
def test_log_json_that_cannot_be_written_is_one_error_line(tmp_path: Path, kind: str) -> None:
    """`--log-json` naming a folder, or a file below a file, failed with a traceback."""
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    target = tmp_path if kind == "folder" else in_the_way / "run.jsonl"
    result = CliRunner().invoke(app, ["--log-json", str(target), "catalog", "check"])
    assert result.exit_code == 2, result.output
    line = _one_line_error(result.output)
    assert f"--log-json {target}" in line
    if kind == "file in the way":
        assert f"not a folder: {in_the_way}" in line


def test_json_log_keeps_the_exception_of_a_redacted_record(tmp_path: Path) -> None:
    """With the build's log redaction installed, a record's exception is already formatted
    (``exc_text``) and ``exc_info`` cleared: the JSON line lost the traceback entirely."""
    install_log_redaction()
    path = tmp_path / "log.jsonl"
    handler = log_json_to(path)
    logger = logging.getLogger("las_builder.test_cli_attacks")
    try:
        try:
            raise RuntimeError("shard reader broke at https://host/a.tif?token=s3cr3t")
        except RuntimeError:
            logger.exception("shard %d failed", 3)
    finally:
        logging.getLogger("las_builder").removeHandler(handler)
        handler.close()
    entry = json.loads(path.read_text().splitlines()[-1])
    assert entry["message"] == "shard 3 failed"
    assert "RuntimeError: shard reader broke" in entry["exception"]
    assert "s3cr3t" not in entry["exception"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe\x00n\x00a\x00m\x00e", "is not UTF-8 text (byte 0xff at offset 0)"),
        (None, "is a folder: give its YAML file"),
    ],
)
def test_train_config_that_is_not_text_or_a_file(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    """A UTF-16 (or binary) config raised UnicodeDecodeError with a traceback; a folder was
    said to be "not found"."""
    config = tmp_path / "config.yaml"
    if content is None:
        config.mkdir()
    else:
        config.write_bytes(content)
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2, result.output
    assert expected in _one_line_error(result.output)


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_out_that_cannot_be_a_file_fails_before_any_work(tmp_path: Path, command: str) -> None:
    """`--out` naming a folder (or under a file) failed with a traceback after the whole
    evaluation or prediction; now it fails first, naming the option."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    second = "no-dataset" if command == "eval" else "no-dataset:s1"
    for out, expected in (
        (folder, f"--out {folder} is a folder"),
        (in_the_way / "x", f"{in_the_way} is a file, not a folder"),
    ):
        args = [command, str(tmp_path / "no.pt"), second, "--out", str(out)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert expected in _one_line_error(result.output)


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--classes", ",, ,", "--classes ',, ,' names nothing"),
        ("--classes", "water,trees,water", "--classes names water more than once"),
        ("--inputs", ",", "--inputs ',' names nothing"),
    ],
)
def test_predict_list_options_that_name_nothing_or_twice(
    tmp_path: Path, option: str, value: str, expected: str
) -> None:
    """`--classes ,` silently predicted the default LAS classes, and a class named twice
    gave a map whose two codes print as one name."""
    args = ["predict", str(tmp_path / "no.pt"), "x:s1", "-o", str(tmp_path / "p.tif")]
    result = CliRunner().invoke(app, [*args, option, value])
    assert result.exit_code == 2, result.output
    assert expected in _one_line_error(result.output)


def test_eval_products_that_name_nothing(tmp_path: Path) -> None:
    """`--products ,` silently scored the trained products instead."""
    args = ["eval", str(tmp_path / "no.pt"), str(tmp_path), "--products", ","]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--products ',' names nothing" in _one_line_error(result.output)


@pytest.mark.parametrize("command", ["plan", "build", "build --status", "world create"])
def test_las_catalog_naming_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """LAS_CATALOG naming no folder: `las plan`, `las build` and `las world create` ended with
    a FileNotFoundError traceback (exit 1), unlike `las catalog check`."""
    monkeypatch.setenv("LAS_CATALOG", str(tmp_path / "nowhere"))
    world = command == "world create"
    args = [str(tmp_path / "w"), "--preset", "tiny"] if world else [str(DEMO_RECIPE)]
    result = CliRunner().invoke(app, [*command.split(), *args])
    assert result.exit_code == 2, result.output
    line = _one_line_error(result.output)
    assert f"catalog folder {tmp_path / 'nowhere'} not found" in line
    assert not (tmp_path / "w").exists()


def test_inspect_error_is_the_first_line_when_not_a_terminal(tmp_path: Path) -> None:
    """Not a terminal (CI): the transient progress bar left a blank line before the error."""
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "none")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: "), repr(result.output)


def test_ctrl_c_during_training_says_how_to_resume(small_las: Path, tmp_path: Path) -> None:
    """SIGINT to the process group (a terminal's Ctrl-C) once a checkpoint is written: exit
    130 with one line naming the checkpoints and `--resume`, no traceback (it was a silent
    exit 130)."""
    out = tmp_path / "run"
    sets = [
        f"dataset={small_las}",
        f"out_dir={out}",
        "optim.steps=100000",
        "optim.batch_size=2",
        "checkpoint_every=1",
        "val_every=0",
        "device=cpu",
    ]
    config = ROOT / "configs" / "train-tiny.yaml"
    args = ["train", str(config), *(a for s in sets for a in ("--set", s)), "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "las_builder.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "last.pt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1].decode()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    stderr = err.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), stderr
    line = lines[0]
    assert f"kept in {out}/checkpoints" in line
    assert f"las train {config} --resume" in line
    assert (out / "checkpoints" / "last.pt").is_file()


def test_ctrl_c_during_a_checkpoint_write_counts_as_ctrl_c() -> None:
    """SIGINT inside ``torch.save`` surfaced as torch's RuntimeError about the unfinished zip
    (the KeyboardInterrupt only its context): a traceback instead of the resume line."""
    from las_builder.cli_train import _interrupted

    def write_checkpoint() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("PytorchStreamWriter failed writing file") from None

    with pytest.raises(RuntimeError) as caught:
        write_checkpoint()
    assert caught.value.__cause__ is None  # `from None` hides it, but keeps the context
    assert _interrupted(caught.value)
    assert not _interrupted(RuntimeError("a real failure"))
    assert not _interrupted(ValueError("bad config"))


@pytest.mark.parametrize("command", ["plan", "build", "build --status", "world create"])
def test_las_catalog_naming_a_folder_that_is_no_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """LAS_CATALOG naming an existing folder that is no catalog: `las plan` and `las build`
    died at import with a traceback (sensors/sentinel-2-l2a.yaml not found), `las world
    create` said "unknown preset 'tiny': choose one of " (an empty list)."""
    other = tmp_path / "notes"
    other.mkdir()
    monkeypatch.setenv("LAS_CATALOG", str(other))
    world = command == "world create"
    args = [str(tmp_path / "w"), "--preset", "tiny"] if world else [str(DEMO_RECIPE)]
    result = CliRunner().invoke(app, [*command.split(), *args])
    assert result.exit_code == 2, result.output
    line = _one_line_error(result.output)
    assert f"catalog folder {other} has no " in line and "set LAS_CATALOG to a copy" in line
    assert "sensors/" in line or "world/" in line
    assert not (tmp_path / "w").exists()
