"""The library's input error: a ``ValueError`` that names the field it is about."""

from __future__ import annotations


class InputError(ValueError):
    """A bad input (a file or a spec field); ``field`` names it (``checkpoint``, ``dataset``, ``sparsity``, ...)
    and ``rule`` says what is wrong, so a service can answer with both."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule
