"""Name patterns: the one matching rule behind config ``layers``, ``disable`` and ``disable_quantizers``.

A pattern is either a glob (``fnmatch.fnmatchcase``; ``*`` also crosses dots) or, with a ``re:`` prefix, a
Python regular expression that must match the whole name (``re.fullmatch``).

A pattern matches a qualified name when it matches the name itself OR the name of any module enclosing it:
for ``layer1.0.conv1._input_quantizer`` the candidates are that name, ``layer1.0.conv1``, ``layer1.0`` and
``layer1``. So ``layer1`` reaches everything inside ``layer1`` (but not ``layer10``), and ``fc`` reaches both
of fc's quantizers.

The root module is named ``""``. Only patterns that match the empty string reach it (``*``, ``re:.*``);
a named pattern never does. An empty pattern (``""`` or ``"re:"``) is an error: it could only ever match
the root, which is never what was meant.

Compiled patterns and match results are cached, so calling ``pattern_matches`` once per FX node is cheap.

Example:
    >>> pattern_matches("layer1", "layer1.0.conv1._input_quantizer")
    True
    >>> pattern_matches("layer1", "layer10.conv")
    False
    >>> pattern_matches("re:layer\\\\d+", "layer10.conv")
    True
    >>> pattern_matches("*.downsample.*", "layer1.0.downsample.0")
    True
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "REGEX_PREFIX",
    "PatternError",
    "compile_pattern",
    "enclosing_names",
    "first_match",
    "pattern_matches",
]

REGEX_PREFIX = "re:"


class PatternError(ValueError):
    """A pattern is not a string, is empty, or is a ``re:`` pattern that does not compile.

    Attributes:
        pattern: the offending pattern.
        reason: what is wrong, without the pattern.
    """

    def __init__(self, pattern: Any, reason: str):
        self.pattern = pattern
        self.reason = reason
        super().__init__(f"{reason}, got {pattern!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.pattern, self.reason)


@functools.lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str]:
    if pattern.startswith(REGEX_PREFIX):
        body = pattern[len(REGEX_PREFIX):]
        if not body:
            raise PatternError(pattern, "empty regular expression; use 're:.*' or '*' to match every name")
        try:
            return re.compile(body)
        except re.error as exc:
            raise PatternError(pattern, f"bad regular expression ({exc})") from None
    if not pattern:
        raise PatternError(pattern, "empty pattern; use '*' to match every name")
    return re.compile(fnmatch.translate(pattern))


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Validate a pattern and return the compiled regex used to full-match candidate names.

    Raises:
        PatternError: the pattern is not a non-empty string, or its ``re:`` regex does not compile.

    Example:
        >>> compile_pattern("layer*").fullmatch("layer4.0") is not None
        True
        >>> compile_pattern("re:(")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        quantrewrite.patterns.PatternError: bad regular expression (...), got 're:('
    """
    if not isinstance(pattern, str):
        raise PatternError(pattern, "expected a glob or 're:' regex string")
    return _compile(pattern)


@functools.lru_cache(maxsize=65536)
def enclosing_names(name: str) -> tuple[str, ...]:
    """The name itself, then the name of every enclosing module, innermost first.

    Example:
        >>> enclosing_names("layer1.0.conv1")
        ('layer1.0.conv1', 'layer1.0', 'layer1')
        >>> enclosing_names("")
        ('',)
    """
    parts = name.split(".")
    return tuple(".".join(parts[:end]) for end in range(len(parts), 0, -1))


@functools.lru_cache(maxsize=65536)
def _matches(pattern: str, name: str) -> bool:
    regex = _compile(pattern)
    return any(regex.fullmatch(candidate) for candidate in enclosing_names(name))


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether ``pattern`` matches ``name`` or the name of a module enclosing it (see the module docstring).

    Raises:
        PatternError: for an invalid pattern (see ``compile_pattern``).
        TypeError: when ``name`` is not a string.

    Example:
        >>> pattern_matches("fc", "fc._weight_quantizer")
        True
        >>> pattern_matches("re:classifier\\\\.\\\\d+", "classifier.1")
        True
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {name!r}")
    compile_pattern(pattern)
    return _matches(pattern, name)


def first_match(patterns: Iterable[str], name: str) -> int | None:
    """Index of the first pattern that matches ``name``, or None.

    Example:
        >>> first_match(["*.downsample.*", "fc"], "fc._input_quantizer")
        1
    """
    for index, pattern in enumerate(patterns):
        if pattern_matches(pattern, name):
            return index
    return None
