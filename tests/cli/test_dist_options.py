"""The distributed options on the command line: bad values fail in one line before anything runs."""

from __future__ import annotations

import subprocess
import sys


def test_shard_without_wrap(cli):
    r = cli("inspect", "m:x", "--shard", "layers.*")
    assert r.code == 2
    assert r.err_lines == ["gradprobe: usage error: --shard and --use-orig-params apply to --wrap fsdp/fsdp1"]


def test_bad_dist_timeout(cli):
    r = cli("freeze-check", "m:x", "--trainable", "*", "--dist-timeout", "0")
    assert r.code == 2 and "--dist-timeout 0: use a positive number of seconds" in r.err


def test_nproc_under_torchrun(cli, monkeypatch):
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    r = cli("compare-modes", "m:x", "--nproc", "2")
    assert r.code == 2 and "--nproc starts the processes itself" in r.err


def test_incomplete_launcher_environment(cli, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = cli("inspect", "m:x")
    assert r.code == 2
    assert "RANK/WORLD_SIZE are set but MASTER_ADDR, MASTER_PORT are not" in r.err


def test_unknown_wrapper(cli):
    r = cli("inspect", "m:x", "--wrap", "zero3")
    assert r.code == 2 and "--wrap" in r.err


def test_help_lists_the_options_without_importing_torch():
    code = ("import sys; from gradprobe.cli.app import main; main(['inspect', '--help']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"COLUMNS": "120",
                                                                                            "PATH": ""}).stdout
    assert "--nproc" in out and "--wrap" in out and "--dist-timeout" in out
    assert out.strip().endswith("False")
