"""Loading messages that teach: a meta instance without --device meta, a file spec without :Name, and
--shape ignored next to --inputs."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_an_instance_on_meta_without_device_meta_is_one_clear_error(tmp_path) -> None:
    import subprocess
    import sys

    (tmp_path / "m.py").write_text(
        "import torch\nfrom torch import nn\nwith torch.device('meta'):\n    inst = nn.Linear(8, 2)\n")
    proc = subprocess.run([sys.executable, "-m", "gradprobe", "inspect", "m.py:inst", "--shape", "4,8"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "meta" in lines[0] and "--device meta" in lines[0], proc.stderr


def test_a_file_without_name_lists_what_it_defines_without_running_it(tmp_path) -> None:
    from gradprobe.errors import UsageError
    from gradprobe.load.user_code import split_spec

    model_file = tmp_path / "m.py"
    model_file.write_text("raise SystemExit('must not run')\nclass Net: pass\n"
                          "def build(): pass\ndef _private(): pass\n")
    try:
        split_spec(str(model_file))
    except UsageError as exc:
        assert "defines: Net, build" in str(exc) and "_private" not in str(exc)
    else:
        raise AssertionError("a spec without :Name must be refused")


def test_shape_ignored_next_to_inputs_is_said(tmp_path) -> None:
    from gradprobe.api import load

    (tmp_path / "m.py").write_text(
        "import torch\nfrom torch import nn\nNet = lambda: nn.Linear(3, 2)\ndef x():\n    return torch.ones(1, 3)\n")
    loaded, example = load(f"{tmp_path / 'm.py'}:Net", inputs=f"{tmp_path / 'm.py'}:x", shapes=["5,3"])
    assert tuple(example.args[0].shape) == (1, 3)  # --inputs wins, as issue 2 orders the sources
    assert "--shape ignored: --inputs takes precedence" in loaded.notes
