"""The bad-input corpus: broken invocations and broken models through the real command line.

Every case must end with exit code 2 and exactly one line on stderr that names the problem (the key
words each case lists), never a traceback.  The whole corpus runs in-process through
``gradprobe.cli.main`` (the code path of the console script), and a sample of it runs again in real
subprocesses, several at a time, to prove the installed command behaves the same.  The models live in
``tests/fixtures/`` (``broken_models.py``, ``models.py``, ``bad_imports/``); broken files (syntax errors,
weights) are written to a temporary directory.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

TESTS = Path(__file__).resolve().parents[1]
M = "fixtures/broken_models.py"  # relative to TESTS, the working directory of every case
MI = "fixtures/models.py"  # the failures both corpora need live here once
BAD = "fixtures/bad_imports"


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    words: tuple[str, ...]  # must all appear (case-insensitive) in the one stderr line
    subprocess: bool = False  # also run it through the installed command


def case(id: str, args: str | list[str], *words: str, sub: bool = False) -> Case:
    argv = args.split() if isinstance(args, str) else args
    return Case(id, tuple(argv), words, sub)


CASES: list[Case] = [
    # ---- the target cannot be found, imported or built
    case("missing-module", "inspect no_such_module_xyz:Net", "module 'no_such_module_xyz' not found", "searched",
         sub=True),
    case("missing-file", "inspect fixtures/missing.py:Net", "missing.py", "not found"),
    case("directory", "inspect fixtures/:Net", "is a directory"),
    case("directory-named-py", "inspect {W}/adir.py:Net", "adir.py", "is a directory"),
    case("not-python", "inspect {W}/notes.txt:Net", "notes.txt", "cannot be imported as python"),
    case("syntax-error", "inspect {W}/syntax_error.py:Net", "syntax error", "syntax_error.py:3", sub=True),
    case("import-raises", f"inspect {BAD}/import_raises.py:Net", "importing", "keyerror", "import_raises.py:4"),
    case("import-raises-module", "inspect fixtures.bad_imports.import_raises:Net", "importing", "keyerror"),
    case("import-sys-exit", f"inspect {BAD}/import_exits.py:Net", "sys.exit(4)", "__main__", sub=True),
    case("import-keyboard-interrupt", f"inspect {BAD}/import_interrupt.py:Net", "interrupted"),
    case("import-missing-dependency", f"inspect {BAD}/import_missing_dep.py:Net", "gradprobe_no_such_dependency",
         "install it"),
    case("import-missing-dependency-module", "inspect fixtures.bad_imports.import_missing_dep:Net",
         "gradprobe_no_such_dependency", "install it"),
    case("missing-attribute", f"inspect {M}:Fien", "no attribute 'fien'", "did you mean 'fine'"),
    case("no-colon", f"inspect {M}", "not a spec", "file.py:name"),
    case("bad-attribute-name", f"inspect {M}:1abc", "'1abc'", "not a (dotted) python name"),
    case("class-not-a-module", f"inspect {MI}:NotAModule", "notamodule", "not an nn.module subclass"),
    case("not-callable", f"inspect {MI}:not_a_model", "int", "not an nn.module class, instance or factory"),
    case("constructor-needs-args", f"inspect {MI}:NeedsArgs", "required", "--init", "hidden", "depth",
         sub=True),
    case("init-not-json", f"inspect {MI}:NeedsArgs --init notjson", "--init", "not valid json"),
    case("init-not-object", f"inspect {MI}:NeedsArgs --init [1,2]", "--init", "json object", "list"),
    case("init-wrong-keys", ["inspect", f"{MI}:NeedsArgs", "--init", '{"hidden": 4, "width": 3}'],
         "'width'", "--init"),
    case("init-on-instance", ["inspect", f"{MI}:mlp_instance", "--init", '{"a": 1}'], "--init does not apply",
         "instance"),
    case("constructor-raises", f"inspect {MI}:RaisingInit", "constructor exploded on purpose", "models.py:"),
    case("constructor-sys-exit", f"inspect {M}:CtorExits", "sys.exit(3)"),
    case("factory-returns-dict", f"inspect {MI}:make_not_a_module", "returned dict", "not an nn.module"),
    case("factory-returns-none", f"inspect {M}:factory_returns_none", "returned nonetype", "not an nn.module"),
    case("lazy-module", f"inspect {M}:Lazy", "'encoder.0.weight'", "lazylinear", "uninitialized lazy"),
    case("factory-raises", f"inspect {MI}:make_raising", "runtimeerror", "factory exploded on purpose"),
    # ---- example inputs
    case("no-inputs", f"inspect {MI}:NoExample", "no example inputs", "--shape", "--inputs", "example_input_array"),
    case("wrong-input-shape", f"inspect {M}:WrongShape", "'encoder.0'", "linear", "(3, 5)", "3x5", sub=True),
    case("inputs-raise", f"inspect {M}:Fine --inputs {MI}:inputs_raising", "--inputs", "dataset missing on purpose"),
    case("inputs-none", f"inspect {M}:Fine --inputs {MI}:inputs_none", "--inputs", "gave none"),
    case("inputs-string", f"inspect {M}:Fine --inputs {M}:inputs_string", "gave str"),
    case("inputs-sys-exit", f"inspect {M}:Fine --inputs {M}:inputs_exit", "--inputs", "sys.exit(1)"),
    case("inputs-int-keys", f"inspect {M}:Fine --inputs {M}:inputs_bad_keys", "string keys"),
    case("inputs-wrong-shape", f"inspect {M}:Fine --inputs {M}:inputs_wrong_shape", "'fc1'", "(3, 7)"),
    case("inputs-file-missing", f"inspect {M}:Fine --inputs fixtures/nothere.py:f", "--inputs", "not found"),
    case("inputs-attribute-missing", f"inspect {M}:Fine --inputs {M}:nope", "--inputs", "no attribute 'nope'"),
    case("example-input-is-string", f"inspect {M}:BadExampleInput", "example_input_array", "gave str"),
    # ---- forward
    case("forward-returns-none", f"inspect {MI}:ReturnsNone", "returned none", "not tensors"),
    case("forward-returns-number", f"inspect {M}:ForwardNumber", "python float", "0.5"),
    case("forward-returns-string", f"inspect {M}:ForwardString", "returned a string"),
    case("forward-returns-no-tensor", f"inspect {M}:ForwardDictNoTensor", "dict holding no tensor"),
    case("forward-sys-exit", f"inspect {M}:ForwardExits", "sys.exit('giving up')"),
    case("forward-keyboard-interrupt", f"inspect {MI}:InterruptInForward", "interrupted", "restored", sub=True),
    case("forward-raises-in-submodule", f"inspect {MI}:RaisesInForward", "'encoder.1'", "boom",
         "boom in forward", "(4, 6)"),
    case("forward-recursion", f"inspect {M}:ForwardRecursion", "recursionerror"),
    # ---- backward and loss
    case("backward-inplace", f"inspect {MI}:InplaceBad", "backward", "modified by an inplace operation",
         sub=True),
    case("backward-raises", f"inspect {MI}:RaisesInBackward", "backward", "backward exploded on purpose"),
    case("loss-raises", f"inspect {M}:Fine --loss {M}:loss_raises", "loss function raised", "keyerror"),
    case("loss-not-scalar", f"inspect {M}:Fine --loss {M}:loss_not_scalar", "scalar", "(3, 2)"),
    case("loss-number", f"inspect {M}:Fine --loss {M}:loss_number", "returned float", "scalar"),
    case("loss-not-callable", f"inspect {M}:Fine --loss {MI}:not_a_model", "--loss", "not a function"),
    case("loss-unknown-name", f"inspect {M}:Fine --loss max", "--loss 'max'"),
    # ---- weights
    case("weights-garbage", f"inspect {M}:Fine --weights {{W}}/garbage.pt", "cannot read", "torch.save"),
    case("weights-empty-file", f"inspect {M}:Fine --weights {{W}}/empty.pt", "cannot read", "truncated"),
    case("weights-list", f"inspect {M}:Fine --weights {{W}}/list.pt", "holds a list", "not a state dict"),
    case("weights-tensor", f"inspect {M}:Fine --weights {{W}}/tensor.pt", "holds a tensor", "not a state dict"),
    case("weights-no-tensors", f"inspect {M}:Fine --weights {{W}}/nostate.pt", "holds a dict", "not a state dict"),
    case("weights-pickled-object", f"inspect {M}:Fine --weights {{W}}/pickled.pt", "refused", "pickled python object",
         "weights_only=true", sub=True),
    case("weights-code-execution", f"inspect {M}:Fine --weights {{W}}/evil.pt", "refused", "posix.system"),
    case("weights-raw-pickle", f"inspect {M}:Fine --weights {{W}}/evil.pkl", "cannot read", "torch.save",
         sub=True),
    case("weights-pickled-module", f"inspect {M}:Fine --weights {{W}}/module.pt", "refused",
         "torch.nn.modules.linear.linear"),
    case("weights-shape-mismatch", f"inspect {M}:Fine --weights {{W}}/mismatch.pt", "'fc1.weight'", "(5, 5)",
         "(8, 4)"),
    case("weights-bad-safetensors", f"inspect {M}:Fine --weights {{W}}/bad.safetensors", "safetensors"),
    case("weights-directory", f"inspect {M}:Fine --weights {{W}}/adir.py", "is a directory"),
    case("weights-missing", f"inspect {M}:Fine --weights {{W}}/nothere.pt", "nothere.pt", "not found"),
    # ---- devices and options
    case("device-unknown", f"inspect {M}:Fine --device tpu", "--device 'tpu'", "cpu, cuda"),
    case("device-nonsense", f"inspect {M}:Fine --device nonsense", "--device 'nonsense'"),
    case("device-cuda-missing", f"inspect {M}:Fine --device cuda", "cuda is not available", "--device cpu",
         sub=True),
    case("device-cuda-index-missing", f"inspect {M}:Fine --device cuda:1", "cuda"),
    case("unknown-option", f"inspect {M}:Fine --frobnicate", "no such option: --frobnicate", sub=True),
    case("unknown-command", "frobnicate", "no such command 'frobnicate'"),
    case("missing-target", "inspect", "no target", "[tool.gradprobe]"),
    case("bad-mode", f"inspect {M}:Fine --mode sideways", "--mode", "sideways"),
    case("bad-grad-mode", f"inspect {M}:Fine --grad maybe", "--grad", "maybe"),
    case("bad-format", f"inspect {M}:Fine --format xml", "--format", "xml"),
    case("bad-seed", f"inspect {M}:Fine --seed abc", "--seed"),
    case("bad-shape", f"inspect {M}:Fine --shape 3,x", "--shape '3,x'"),
    case("bad-dtype", f"inspect {M}:Fine --shape 3,4 --dtype float128", "--dtype 'float128'"),
    case("negative-top", f"inspect {M}:Fine --top -1", "--top -1"),
    case("negative-depth", f"inspect {M}:Fine --depth -1", "--depth -1"),
    case("high-zero", f"inspect {M}:Fine --shape 3,4 --dtype int64 --high 0", "--high 0"),
    case("output-unwritable", f"inspect {M}:Fine -f json -o {{W}}/no/such/dir/out.json", "--output",
         "cannot write"),
    # ---- freeze-check
    case("freeze-glob-matches-nothing", f"freeze-check {M}:Fine --frozen fc3", "--frozen 'fc3'",
         "matches no parameter", "did you mean"),
    case("freeze-broken-glob", ["freeze-check", f"{M}:Fine", "--frozen", "[fc1"], "'[fc1'", "matches no parameter"),
    case("freeze-empty-glob", ["freeze-check", f"{M}:Fine", "--trainable", ""], "empty"),
    case("freeze-nothing-to-check", f"freeze-check {M}:Fine", "nothing to check", "--frozen"),
    case("freeze-no-target", "freeze-check --frozen fc1", "no target", "pyproject.toml"),
    case("freeze-bad-unlisted", f"freeze-check {M}:Fine --frozen fc1 --unlisted maybe", "--unlisted", "maybe"),
    case("freeze-baseline-missing", f"freeze-check {M}:Fine --baseline {{W}}/nothere.json", "--baseline",
         "not found", "--write-baseline"),
    case("freeze-baseline-not-json", f"freeze-check {M}:Fine --baseline {{W}}/notes.txt", "--baseline",
         "not json"),
    case("freeze-baseline-wrong-shape", f"freeze-check {M}:Fine --baseline {{W}}/wrong_baseline.json",
         "--baseline", "--write-baseline"),
    case("freeze-optimizer-not-callable", f"freeze-check {M}:Fine --frozen fc1 --optimizer {MI}:not_a_model",
         "--optimizer", "torch.optim.optimizer"),
    case("freeze-optimizer-wrong-signature", f"freeze-check {M}:Fine --frozen fc1 --optimizer {MI}:make_not_a_module",
         "--optimizer", "called with the model"),
    case("freeze-forward-raises", f"freeze-check {MI}:RaisesInForward --frozen encoder", "could not be verified",
         "'encoder.1'", "boom in forward", sub=True),
    case("freeze-backward-inplace", f"freeze-check {MI}:InplaceBad --frozen lin", "could not be verified",
         "modified by an inplace operation"),
    case("freeze-keyboard-interrupt", f"freeze-check {MI}:InterruptInForward --frozen lin", "interrupted"),
    case("freeze-config-missing", f"freeze-check {M}:Fine --frozen fc1 --config {{W}}/nothere.toml", "--config",
         "nothere.toml"),
    case("freeze-junit-unwritable", f"freeze-check {M}:Fine --frozen fc1 --junit {{W}}/no/dir/j.xml", "--junit",
         "cannot write"),
    case("freeze-unknown-option", f"freeze-check {M}:Fine --frozen fc1 --frobnicate", "no such option"),
    # ---- compare-modes
    case("compare-bad-grad-mode", f"compare-modes {M}:Fine --modes train:sideways", "--modes", "'sideways'",
         sub=True),
    case("compare-modes-not-pairs", f"compare-modes {M}:Fine --modes nonsense", "--modes", "train:grad"),
    case("compare-repeat-zero", f"compare-modes {M}:Fine --repeat 0", "--repeat 0"),
    case("compare-keyboard-interrupt", f"compare-modes {MI}:InterruptInForward --repeat 1", "interrupted"),
    case("compare-missing-module", "compare-modes no_such_module_xyz:Net", "no_such_module_xyz", "not found"),
    case("compare-cuda-missing", f"compare-modes {M}:Fine --device cuda", "cuda is not available"),
    case("compare-weights-not-torch", f"compare-modes {M}:Fine --weights {M}", "cannot read", "torch.save"),
    case("compare-unknown-option", f"compare-modes {M}:Fine --frobnicate", "no such option"),
]


# the report is complete and printed; writing the extra file the user named fails afterwards
REPORT_THEN_FAIL = {"freeze-junit-unwritable"}
# errors only on a machine without CUDA (CI's torch is the CPU build)
NEEDS_NO_CUDA = {"device-cuda-missing", "device-cuda-index-missing", "compare-cuda-missing"}


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


class Cfg:
    """A class pickled into a checkpoint: weights_only=True must refuse it."""

    def __init__(self) -> None:
        self.lr = 0.1


class Evil:
    """Unpickling this runs a shell command: gradprobe must never get that far."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Broken files the cases name as {W}/...; written once per module."""
    w = tmp_path_factory.mktemp("bad_inputs")
    (w / "syntax_error.py").write_text("import torch\n\nclass Net(torch.nn.Module)\n    pass\n")
    (w / "adir.py").mkdir()
    (w / "notes.txt").write_text("not python\n")
    (w / "garbage.pt").write_bytes(b"\x00\x01 this is not a torch file " * 10)
    (w / "empty.pt").write_bytes(b"")
    torch.save([torch.randn(2)], w / "list.pt")
    torch.save(torch.randn(3), w / "tensor.pt")
    torch.save({"epoch": 3, "lr": 0.1}, w / "nostate.pt")
    torch.save({"cfg": Cfg(), "fc1.weight": torch.randn(8, 4)}, w / "pickled.pt")
    torch.save(nn.Linear(2, 2), w / "module.pt")
    torch.save({"fc1.weight": torch.randn(5, 5)}, w / "mismatch.pt")
    (w / "bad.safetensors").write_bytes(b"\xff" * 40)
    (w / "wrong_baseline.json").write_text('{"schema": "gradprobe.freeze-baseline/1", "parameters": [1, 2]}')
    torch.save({"fc1.weight": Evil(w / "pwned")}, w / "evil.pt")
    with (w / "evil.pkl").open("wb") as fh:
        pickle.dump({"fc1.weight": Evil(w / "pwned")}, fh)
    return w


def argv_for(c: Case, w: Path) -> list[str]:
    return [a.replace("{W}", str(w)) for a in c.args]


def check_one_line(c: Case, code: int, out: str, err: str) -> None:
    assert code == 2, f"{c.id}: exit {code}, stderr: {err!r}"
    assert "Traceback" not in err and "Traceback" not in out, f"{c.id}: {err}"
    lines = err.removesuffix("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), f"{c.id}: expected one stderr line, got {lines!r}"
    line = lines[0].lower()
    assert line.startswith("gradprobe: "), line
    missing = [w for w in c.words if w.lower() not in line]
    assert not missing, f"{c.id}: {missing} not in {lines[0]!r}"


@pytest.fixture
def in_tests_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(TESTS)
    monkeypatch.setenv("COLUMNS", "100")
    yield


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_in_process(c: Case, workdir: Path, in_tests_dir: None,
                                 capfd: pytest.CaptureFixture[str]) -> None:
    from gradprobe.cli.app import main

    if c.id in NEEDS_NO_CUDA and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    grad_before = torch.is_grad_enabled()
    capfd.readouterr()
    code = main(argv_for(c, workdir))
    captured = capfd.readouterr()
    check_one_line(c, code, captured.out, captured.err)
    assert not (workdir / "pwned").exists(), "a weights file ran code"
    if c.id not in REPORT_THEN_FAIL:
        assert captured.out == "", f"{c.id}: nothing belongs on stdout when the command fails"
    assert torch.is_grad_enabled() == grad_before


def gradprobe_command() -> list[str]:
    script = Path(sys.executable).with_name("gradprobe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gradprobe"]


def run_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1"}
    return subprocess.run([*gradprobe_command(), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


SUBPROCESS_CASES = [c for c in CASES if c.subprocess and not (c.id in NEEDS_NO_CUDA and torch.cuda.is_available())]


@pytest.mark.slow
def test_bad_input_sample_in_subprocesses(workdir: Path) -> None:
    """The installed command, in fresh processes (three at a time: each one pays the torch import)."""
    assert len(SUBPROCESS_CASES) >= 12
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda c: run_process(argv_for(c, workdir), TESTS), SUBPROCESS_CASES))
    for c, proc in zip(SUBPROCESS_CASES, results, strict=True):
        check_one_line(c, proc.returncode, proc.stdout, proc.stderr)
    assert not (workdir / "pwned").exists(), "a weights file ran code"


def test_debug_shows_the_traceback(workdir: Path, in_tests_dir: None, capfd: pytest.CaptureFixture[str]) -> None:
    """The contrast case: --debug is the one way to get the traceback."""
    from gradprobe.cli.app import main

    code = main(["inspect", f"{MI}:RaisesInForward", "--debug"])
    err = capfd.readouterr().err
    assert code == 2
    assert "Traceback" in err and "boom in forward" in err
    assert err.rstrip("\n").splitlines()[-1].startswith("gradprobe: run error:")


# ------------------------------------------------------------- odd models where a report is the answer


def run_json(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    from gradprobe.cli.app import main

    capfd.readouterr()
    code = main([*args, "--format", "json"])
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    return code, json.loads(captured.out), captured.err


@pytest.mark.parametrize(("spec", "path"), [(f"{MI}:NonFinite", "output[1]"), (f"{M}:InfOutput", "output[1]")],
                         ids=["nan", "inf"])
def test_nonfinite_outputs_are_a_finding_not_a_crash(spec: str, path: str, in_tests_dir: None,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = run_json(["inspect", spec], capfd)
    assert code == 0
    bad = [f for f in doc["findings"] if f["code"] == "nonfinite-output"]
    assert [f["subject"] for f in bad] == [path]
    assert bad[0]["severity"] == "error"
    # --strict turns an error finding into exit code 1, still not a crash
    from gradprobe.cli.app import main

    assert main(["inspect", spec, "--strict", "--format", "json"]) == 1


def test_model_printing_to_stdout_keeps_json_valid(in_tests_dir: None, capfd: pytest.CaptureFixture[str]) -> None:
    code, doc, err = run_json(["inspect", f"{M}:Prints"], capfd)
    assert code == 0 and doc["schema"] == "gradprobe.inspect/1"
    assert "building Prints" in err and "forward called with (3, 4)" in err and "{not json" in err


@pytest.mark.slow
def test_printing_at_import_through_the_installed_command() -> None:
    proc = run_process(["inspect", f"{BAD}/import_prints.py:Net", "--format", "json"], TESTS)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["target"] == f"{BAD}/import_prints.py:Net"
    for text in ("importing import_prints", "constructing Net", "forward torch.Size([3, 4])"):
        assert text in proc.stderr


def test_global_grad_off_at_import_is_a_finding(in_tests_dir: None, capfd: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = run_json(["inspect", f"{BAD}/import_grad_off.py:Net"], capfd)
    assert code == 0
    assert doc["global_grad_enabled"] is False
    assert doc["backward"] is True  # --grad grad enables grad explicitly
    assert {p["grad"] for p in doc["parameters"]} == {"nonzero"}
    assert "global-grad-disabled" in {f["code"] for f in doc["findings"]}


def test_forward_switching_grad_off_is_undone(in_tests_dir: None, capfd: pytest.CaptureFixture[str]) -> None:
    assert torch.is_grad_enabled()
    code, doc, _ = run_json(["inspect", f"{M}:GradModeFlipper"], capfd)
    assert code == 0 and doc["backward"] is True
    assert torch.is_grad_enabled()


def test_empty_model(in_tests_dir: None, capfd: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = run_json(["inspect", f"{MI}:Empty"], capfd)
    assert code == 0
    assert doc["parameters"] == [] and doc["backward"] is False
    assert doc["backward_skipped_reason"]
    assert doc["outputs"][0]["requires_grad"] is False
    assert not [f for f in doc["findings"] if f["severity"] == "error"]


def test_same_module_registered_twice(in_tests_dir: None, capfd: pytest.CaptureFixture[str]) -> None:
    """One Linear under four names: two parameters, each listed once with its three other names."""
    code, doc, _ = run_json(["inspect", f"{M}:SharedTwice"], capfd)
    assert code == 0
    params = {p["name"]: p for p in doc["parameters"]}
    assert set(params) == {"first.weight", "first.bias"}
    assert set(params["first.weight"]["aliases"]) == {"second.weight", "blocks.0.weight", "blocks.1.weight"}
    assert {p["grad"] for p in params.values()} == {"nonzero"}


def test_named_parameters_yielding_duplicates(in_tests_dir: None, capfd: pytest.CaptureFixture[str]) -> None:
    """A named_parameters override that yields each pair twice: no parameter is its own alias."""
    code, doc, _ = run_json(["inspect", f"{M}:DuplicatingNamedParameters"], capfd)
    assert code == 0
    assert [p["name"] for p in doc["parameters"]] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert all(p["aliases"] == [] for p in doc["parameters"])
