"""The `vitkit` dispatcher: help, unknown commands, and user errors as one line with exit 2."""

import subprocess
import sys

from vitkit import cli
from vitkit.errors import ConfigError


def run(*args):
    return subprocess.run([sys.executable, "-m", "vitkit", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0
    for name in cli.COMMANDS:
        assert f"  {name} " in result.stdout


def test_unknown_command_exits_2_with_one_line():
    result = run("trian")
    assert result.returncode == 2
    assert result.stderr.strip() == ("vitkit: unknown command 'trian'; expected one of: "
                                     + ", ".join(cli.COMMANDS))


def _raise_config_error(argv):
    raise ConfigError("config key 'x' must be an integer, got 'a' (str)")


def test_user_error_is_one_line_without_traceback(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "boom", (f"{__name__}:_raise_config_error", ""))
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err == "vitkit boom: error: config key 'x' must be an integer, got 'a' (str)\n"


def test_models_lists_presets():
    result = run("models", "vit_base_patch16_*")
    assert result.returncode == 0
    assert result.stdout.splitlines()[0].startswith("vit_base_patch16_224")
    assert "dim=768" in result.stdout and "vit_tiny" not in result.stdout
