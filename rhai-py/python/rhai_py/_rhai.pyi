"""Type stubs of the compiled module ``rhai_py._rhai`` (re-exported by ``rhai_py``)."""

from collections.abc import Callable, Mapping
from types import EllipsisType
from typing import final

__all__ = ["AST", "RHAI_VERSION", "Engine", "__version__", "render"]

__version__: str
RHAI_VERSION: str

@final
class AST:
    """An immutable compiled script, reusable across engines and threads."""

    @property
    def source(self) -> str:
        """The script text this AST was compiled from."""

@final
class Engine:
    """A sandboxed Rhai engine; every limit is set explicitly (see the README)."""

    def __new__(
        cls,
        *,
        max_operations: int | None = 100_000_000,
        max_call_levels: int = 64,
        max_expr_depth: int = 128,
        max_function_expr_depth: int = 128,
        max_string_size: int = 10_485_760,
        max_array_size: int = 10_000,
        max_map_size: int = 10_000,
        max_variables: int = 10_000,
        max_functions: int = 1_000,
        max_modules: int = 100,
        timeout_s: float | None = 30.0,
        strict_variables: bool = False,
        on_print: Callable[[str], object] | None = None,
        on_debug: Callable[[str, str | None, int | None, int | None], object] | None = None,
    ) -> Engine: ...
    def compile(self, script: str) -> AST: ...
    def eval(
        self,
        script: str | AST,
        *,
        constants: Mapping[str, object] | None = None,
        variables: Mapping[str, object] | None = None,
        timeout_s: float | EllipsisType | None = ...,
    ) -> object: ...
    def eval_text(
        self,
        script: str | AST,
        *,
        constants: Mapping[str, object] | None = None,
        variables: Mapping[str, object] | None = None,
        timeout_s: float | EllipsisType | None = ...,
    ) -> str: ...
    def register_fn(self, name: str, fn: Callable[..., object]) -> None: ...
    def register_module(
        self, name: str, functions: Mapping[str, Callable[..., object]]
    ) -> None: ...

def render(value: object) -> str: ...
