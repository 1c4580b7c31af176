"""BoxGrinder ``#NAME#`` substitution.

Lookup order: the built-ins (``#OS_NAME#``, ``#OS_VERSION#``, ``#ARCH#``, ``#BASE_ARCH#``),
which win over appliance variables of the same name as in BoxGrinder, then the appliance's
variables, then the environment; an unknown name is left as written.
Values may reference other variables; a cycle or nesting deeper than 20 is an error.

    vars = Variables({"PORT": "80", "URL": "http://x:#PORT#/"}, builtins={}, env={})
    vars.expand("#URL#")   # 'http://x:80/'
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from imagekit.errors import InputError

_VAR = re.compile(r"#([A-Za-z_][A-Za-z0-9_]*)#")
MAX_DEPTH = 20


def base_arch(arch: str) -> str:
    """BoxGrinder's ``#BASE_ARCH#``: i386 for any i?86, the arch itself otherwise."""
    return "i386" if re.fullmatch(r"i[3-6]86", arch) else arch


class Variables:
    def __init__(
        self, defined: Mapping[str, str], builtins: Mapping[str, str], env: Mapping[str, str]
    ) -> None:
        self.defined = dict(defined)
        self.builtins = dict(builtins)
        self.env = env

    def expand(self, text: str, _stack: tuple[str, ...] = ()) -> str:
        """``text`` with every known ``#NAME#`` replaced; raises InputError on a cycle."""
        if len(_stack) > MAX_DEPTH:
            raise InputError(f"expected variables nested at most {MAX_DEPTH} deep, got {' → '.join(_stack)}")

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in _stack:
                chain = " → ".join((*_stack[_stack.index(name) :], name))
                raise InputError(f"expected variables without a cycle, got {chain}")
            if name in self.builtins:
                return self.builtins[name]
            if name in self.defined:
                return self.expand(self.defined[name], (*_stack, name))
            if name in self.env:
                return self.env[name]
            return match.group(0)

        return _VAR.sub(one, text)
