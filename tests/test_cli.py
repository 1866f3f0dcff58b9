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
    assert "weights: apache-2.0" in result.stdout.splitlines()[0]
    dinov3 = run("models", "dinov3").stdout.splitlines()
    assert len(dinov3) == 12 and all("rope=dinov3" in line and "weights: " in line for line in dinov3)
    assert "weights: fair-noncommercial-research-license" in next(n for n in dinov3 if n.startswith("vit_tiny"))


def test_a_reader_that_goes_away_stops_the_listing_quietly():
    """`vitkit models | head -1`: the pipe closes before the listing is written; no internal error, nothing on
    stderr, SIGPIPE's exit code."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "vitkit", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == "", err
