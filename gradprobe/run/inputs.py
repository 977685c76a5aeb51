"""What the run needs of the example inputs: a protocol, so the run layer never imports the load layer.

``gradprobe.load.inputs.ExampleInputs`` satisfies it; tests and the API may pass any object that does.
"""

from __future__ import annotations

from typing import Any, Protocol


class RunInputs(Protocol):
    """``model(*inputs.args, **inputs.kwargs)``, plus the two views the run shows in losses and messages."""

    @property
    def args(self) -> tuple[Any, ...]: ...

    @property
    def kwargs(self) -> dict[str, Any]: ...

    def as_user_value(self) -> Any:
        """The inputs as a user thinks of them (handed to a user's loss function)."""
        ...

    def describe(self) -> str:
        """Shapes and dtypes, for error messages."""
        ...
