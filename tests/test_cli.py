"""The command line: help for every command, errors as messages (exit 3), not tracebacks."""

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
    assert code == 3  # data/config error (2 is argparse's usage error)
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
    for name in ("Feature extraction", "Fine-tuning", "From scratch"):
        assert name in out
    assert (tmp_path / "runs" / "demo" / "report.html").exists()
    assert "report:" in out


def _all_help() -> str:
    parser = build_parser()
    texts = [parser.format_help()]
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if isinstance(action, __import__("argparse")._SubParsersAction):
                for sub in action.choices.values():
                    texts.append(sub.format_help())
                    stack.append(sub)
    return "\n".join(texts)


def test_help_shows_each_default_once_and_never_breaks_a_name():
    text = _all_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    import re

    flat = " ".join(text.split())
    assert not re.search(r"default[^()]*\)\s*\(default:", flat)  # written default + argparse's
    assert "partial_fine_tuning" in text and "partia l" not in text
    assert "phantom (default: 0)" in " ".join(text.split())  # 0 == False, but is a default
    assert "exit codes:" in text


def test_every_option_has_a_help_line():
    parser = build_parser()
    stack, missing = [parser], []
    while stack:
        p = stack.pop()
        for action in p._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                stack.extend(action.choices.values())
            elif action.option_strings and not action.help:
                missing.append(f"{p.prog} {action.option_strings[0]}")
    assert not missing, missing


def test_same_option_exists_wherever_it_applies():
    """A script passing one option set to compare, train and advise must not fail on a gap."""
    parser = build_parser()
    subs = next(a for a in parser._actions if hasattr(a, "choices") and a.choices).choices
    opts = {name: {o for a in p._actions for o in a.option_strings} for name, p in subs.items()}
    shared = {"--positive-class", "--patient-id-pattern", "--backbone", "--image-size", "--seed"}
    for command in ("compare", "train", "advise"):
        assert shared <= opts[command], (command, shared - opts[command])
    for command in ("compare", "train", "evaluate", "advise", "backbones", "demo"):
        assert "--json" in opts[command], command


def _medtl(*args, cwd, env_extra=None):
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "medtl", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_json_output_is_one_document_and_progress_stays_off_stdout(tmp_path):
    """Also: --log-file, and run files written with the user's umask."""
    import json
    import os
    import stat

    out = _medtl("backbones", "--json", cwd=tmp_path)
    rows = json.loads(out.stdout)
    assert out.returncode == 0 and {"tiny_test"} <= {r["name"] for r in rows}
    run = tmp_path / "r"
    out = _medtl("demo", "--quick", "--out", str(run), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)  # nothing but the document on stdout
    assert summary["complete"] is True and set(summary["strategies"]) >= {"fine_tuning"}
    # without a terminal and without --json: results on stdout, one line per step on stderr
    log = tmp_path / "medtl.log"
    out = _medtl("--log-file", str(log), "demo", "--quick", "--out", str(run), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "\r" not in out.stdout + out.stderr  # no carriage-return progress bars in a log
    assert "epoch 1" not in out.stdout and "Fine-tuning" in out.stdout
    assert "estimated time" in out.stderr and "left" in out.stderr
    assert "epochs of fine-tuning done" in out.stderr
    assert "epoch 1" in log.read_text()  # --log-file keeps the steps, with timestamps
    # run files get the user's umask, not mkstemp's 0600
    mode = stat.S_IMODE(os.stat(run / "summary.json").st_mode)
    umask = os.umask(0o022)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_missing_weights_are_refused_before_any_data_is_read(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    data = tmp_path / "does_not_exist_yet"
    code = main(["compare", "--data", str(data), "--backbone", "resnet18.tv_in1k",
                 "--out", str(tmp_path / "run"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 3
    assert "resnet18.tv_in1k" in err and "--weights" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written, no data read
    # from scratch needs no pretrained weights: not refused for them
    code = main(["compare", "--data", str(data), "--backbone", "resnet18.tv_in1k",
                 "--strategies", "from_scratch", "--out", str(tmp_path / "run"), "--quiet"])  # fmt: skip
    assert "--weights" not in capsys.readouterr().err
