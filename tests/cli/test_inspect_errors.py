"""Every bad input (issue 2 §7): exit code 2, ONE line on stderr naming the problem and the fix, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures import models as mi

FILE = str(Path(mi.__file__))


def assert_one_line_error(result, *needles: str) -> str:
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err
    assert len(result.err_lines) == 1, result.err
    line = result.err_lines[0]
    assert line.startswith("gradprobe: ")
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert result.out == ""
    return line


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Broken user files and weights files, written once."""
    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "bad_syntax.py").write_text("import torch\n\ndef broken(:\n    pass\n")
    (d / "raises_at_import.py").write_text("import torch\n\nraise RuntimeError('import exploded')\n")
    (d / "missing_dep.py").write_text("import not_a_real_package_xyz\n")
    model = mi.MLP()
    torch.save(model.state_dict(), d / "good.pt")
    torch.save(model, d / "pickled.pt")  # a whole pickled module: weights_only must refuse it
    torch.save([1, 2, 3], d / "list.pt")
    (d / "garbage.pt").write_bytes(b"this is not a torch file")
    bad_shape = model.state_dict()
    bad_shape["net.0.weight"] = torch.zeros(9, 9)
    torch.save(bad_shape, d / "shape.pt")
    (d / "garbage.safetensors").write_bytes(b"\x00" * 16)
    return d


# ------------------------------------------------------------------ target


def test_module_not_found_names_the_directory(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli("inspect", "no_such_module_xyz:Net"), "'no_such_module_xyz' not found",
                          str(tmp_path), "load error")


def test_file_not_found(cli) -> None:
    assert_one_line_error(cli("inspect", "nowhere/model.py:Net"), "'nowhere/model.py' not found")


def test_directory_instead_of_file(cli, files: Path) -> None:
    assert_one_line_error(cli("inspect", f"{files}/:Net"), "is a directory")


def test_syntax_error_names_file_and_line(cli, files: Path) -> None:
    assert_one_line_error(cli("inspect", f"{files}/bad_syntax.py:Net"),
                          "syntax error", f"{files}/bad_syntax.py:3")


def test_import_time_exception(cli, files: Path) -> None:
    assert_one_line_error(cli("inspect", f"{files}/raises_at_import.py:Net"),
                          "RuntimeError: import exploded", "raises_at_import.py:3")


def test_missing_dependency_of_user_code(cli, files: Path) -> None:
    assert_one_line_error(cli("inspect", f"{files}/missing_dep.py:Net"), "not_a_real_package_xyz", "install")


def test_attribute_missing_suggests_close_names(cli) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:MLQ"), "has no attribute 'MLQ'", "did you mean", "'MLP'")


def test_dotted_attribute_missing(cli) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:registry.modle"), "no attribute 'modle'", "'model'")


@pytest.mark.parametrize(("name", "needle"), [
    ("not_a_model", "is a int, not an nn.Module class, instance or factory"),
    ("NotAModule", "not an nn.Module subclass"),
    ("make_not_a_module", "returned dict, not an nn.Module"),
])
def test_not_a_module_or_factory(cli, name: str, needle: str) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:{name}"), needle)


@pytest.mark.parametrize(("name", "needle"), [
    ("RaisingInit", "ValueError: constructor exploded on purpose"),
    ("make_raising", "RuntimeError: factory exploded on purpose"),
])
def test_constructor_or_factory_raised(cli, name: str, needle: str) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:{name}"), needle, "models.py:")


def test_constructor_needs_args(cli) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:NeedsArgs"), "'hidden'", "--init")


@pytest.mark.parametrize(("spec", "needle"), [
    ("MLP", "is not a spec"),
    (f"{FILE}:", "is not a spec"),
    (f"{FILE}:1abc", "is not a (dotted) Python name"),
])
def test_malformed_target_spec(cli, spec: str, needle: str) -> None:
    assert_one_line_error(cli("inspect", spec), needle)


# ------------------------------------------------------------------ inputs


def test_inputs_missing(cli) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:NoExample"), "no example inputs", "--shape", "--inputs",
                          "example_input_array")


@pytest.mark.parametrize(("fn", "needle"), [("inputs_none", "gave None"), ("inputs_raising", "OSError")])
def test_bad_inputs_function(cli, fn: str, needle: str) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:MLP", "--inputs", f"{FILE}:{fn}"), needle, "--inputs")


# ------------------------------------------------------------------ the run


def test_forward_raised_names_module_and_input_shapes(cli) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:RaisesInForward"), "forward raised in module 'encoder.1' (Boom)",
                          "ValueError: boom in forward", f"({mi.B}, {mi.IN}) float32")


def test_forward_raised_in_the_models_own_forward(cli) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:RaisesInOwnForward"),
                          "forward raised in the model itself (RaisesInOwnForward)", "RuntimeError: shape '[7, 7]'")


def test_forward_shape_mismatch(cli) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:ShapeMismatch"), "'layers.1' (Linear)", "4x5 and 7x3")


def test_forward_with_wrong_input_shape(cli) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:MLP", "--shape", "2,9"), "'net.0' (Linear)", "(2, 9)")


def test_backward_raised(cli) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:RaisesInBackward"), "backward raised",
                          "backward exploded on purpose")


def test_inplace_modification_is_an_error_not_wrong_gradients(cli) -> None:
    line = assert_one_line_error(cli("inspect", f"{FILE}:InplaceBad"), "modified by an inplace operation")
    assert ".;" not in line


def test_keyboard_interrupt_in_forward(cli) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:InterruptInForward"), "interrupted", "restored")


def test_forward_returning_none(cli) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:ReturnsNone"), "returned None")


def test_bad_loss_function_result(cli) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:MLP", "--loss", f"{FILE}:inputs_tensor"), "loss")


# ------------------------------------------------------------------ option values


@pytest.mark.parametrize(("args", "needle"), [
    (["--mode", "test"], "--mode"),
    (["--grad", "nograd"], "--grad"),
    (["--format", "xml"], "--format"),
    (["--depth", "-1"], "--depth -1"),
    (["--top", "-1"], "--top -1"),
    (["--depth", "two"], "--depth"),
    (["--shape", "4,x"], "--shape '4,x'"),
    (["--shape", "2,6", "--dtype", "int99"], "--dtype 'int99'"),
    (["--shape", "2,6", "--dtype", "int64", "--high", "0"], "--high 0"),
    (["--init", "{bad"], "--init is not valid JSON"),
    (["--init", "[1, 2]"], "--init must be a JSON object"),
    (["--init", '{"nope": 1}'], "takes no argument 'nope'"),
    (["--device", "foo"], "--device 'foo'"),
    (["--loss", "max"], "--loss 'max'"),
    (["--loss", "no_such_module_xyz:fn"], "not found"),
    (["--bogus"], "No such option"),
])
def test_bad_option_values(cli, args: list[str], needle: str) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:MLP", *args), needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(cli) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:MLP", "--device", "cuda"), "CUDA is not available")


def test_missing_target_argument(cli) -> None:
    assert_one_line_error(cli("inspect"), "TARGET")


def test_unwritable_output(cli, tmp_path: Path) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:MLP", "-f", "json", "--output", str(tmp_path / "no" / "x.json")),
                          "--output", "cannot write")


# ------------------------------------------------------------------ weights


@pytest.mark.parametrize(("name", "needle"), [
    ("missing.pt", "not found"),
    ("pickled.pt", "weights_only"),
    ("list.pt", "holds a list, not a state dict"),
    ("garbage.pt", "cannot read"),
    ("shape.pt", "'net.0.weight' has shape (9, 9) in the file but (5, 6) in the model"),
    ("garbage.safetensors", "not a readable safetensors file"),
])
def test_bad_weights(cli, files: Path, name: str, needle: str) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:MLP", "--weights", str(files / name)), needle, "--weights")


def test_weights_directory(cli, files: Path) -> None:
    assert_one_line_error(cli("inspect", f"{FILE}:MLP", "--weights", str(files)), "is a directory")


def test_pickled_weights_are_refused_with_the_reason(cli, files: Path) -> None:
    line = assert_one_line_error(cli("inspect", f"{FILE}:MLP", "--weights", str(files / "pickled.pt")))
    assert "refused" in line and "pickled" in line and "state_dict()" in line


# ------------------------------------------------------------------ the real command, in a subprocess


@pytest.mark.slow
def test_errors_through_the_installed_command(run_cli, files: Path) -> None:
    """A few of the above through the installed script: same single line, exit code 2."""
    cases = [
        (["inspect", f"{files}/bad_syntax.py:Net"], f"{files}/bad_syntax.py:3"),
        (["inspect", f"{FILE}:MLP", "--weights", str(files / "pickled.pt")], "weights_only"),
    ]
    for args, needle in cases:
        assert_one_line_error(run_cli(*args), needle)


@pytest.mark.slow
def test_forward_error_through_the_installed_command(run_cli) -> None:
    assert_one_line_error(run_cli("inspect", f"{FILE}:RaisesInForward"), "'encoder.1' (Boom)")


def test_debug_shows_the_traceback(cli) -> None:
    result = cli("inspect", f"{FILE}:RaisesInForward", "--debug")
    assert result.code == 2
    assert "Traceback" in result.err and "boom in forward" in result.err
    assert result.err.rstrip().splitlines()[-1].startswith("gradprobe: run error: forward raised in module")
