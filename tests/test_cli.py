"""The command line: help for every command, errors as messages (exit 2), not tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medtl.cli import build_parser, main

COMMANDS = [
    "demo",
    "compare",
    "train",
    "evaluate",
    "predict",
    "adapt",
    "advise",
    "backbones",
    "data",
]


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for c in COMMANDS:
        assert c in out


@pytest.mark.parametrize("command", [*COMMANDS, "data synth", "data card", "data check"])
def test_each_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command.split(), "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "medtl " in out


def test_bad_config_is_a_message_not_a_traceback(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trian: {epochs: 2}\n")
    code = main(["compare", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Did you mean 'train'" in err and "Traceback" not in err


def test_console_script_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "medtl", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "medtl" in out.stdout


def test_parser_builds_quickly():
    assert build_parser().prog == "medtl"


def test_demo_quick_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo's cache goes to ./.medtl_cache
    assert main(["demo", "--quick", "--out", "runs/demo", "--quiet"]) == 0
    out = capsys.readouterr().out
    for name in ("feature_extraction", "fine_tuning", "from_scratch"):
        assert name in out
    assert (tmp_path / "runs" / "demo" / "report.html").exists()
    assert "report:" in out
