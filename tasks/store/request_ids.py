"""A run's request ids packed in one numpy array: ~32 bytes an id instead of ~90 as a Python `str` in a list.

A plan returns every pending request id, and a generate run holds them from the plan to its last claim:
1.58M ids (10x LLaVA) took ~140 MB as a list of str, the largest thing that grew with the run
(docs/BENCHMARKS.md, "The data path at 10x LLaVA"). `RequestIds` is a read-only `Sequence[str]`: slicing
gives another `RequestIds` (a view, no copy), iterating and indexing give `str`, so callers that take a
sequence of ids need no change. The ids are the ASCII hashes of `tasks/prompting/plan.py`; any other
`str` (tests, hand-made ids) is kept too, in a wider unicode array.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np

_ITER_CHUNK = 8192  # ids decoded to str at a time while iterating


def _pack(ids: Sequence[str]) -> np.ndarray:
    if not ids:
        return np.empty(0, dtype="S1")
    try:  # fixed-width ASCII: one byte a character, NUL-padded (an id never ends in NUL)
        return np.array(ids, dtype="S")
    except UnicodeEncodeError:
        return np.array(ids, dtype="U")


class RequestIds(Sequence[str]):
    """Request ids in order, packed; a read-only sequence of `str` (see the module docstring)."""

    __slots__ = ("_ids",)

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids = ids._ids if isinstance(ids, RequestIds) else _pack(list(ids))

    @classmethod
    def _of(cls, array: np.ndarray) -> RequestIds:
        new = cls.__new__(cls)
        new._ids = array
        return new

    @classmethod
    def concat(cls, parts: Iterable[Sequence[str]]) -> RequestIds:
        """The ids of every part, in order (one copy at the end: build a plan's ids step by step this way)."""
        arrays = [p._ids if isinstance(p, RequestIds) else _pack(list(p)) for p in parts]
        arrays = [a for a in arrays if len(a)]
        if not arrays:
            return cls()
        if len({a.dtype.kind for a in arrays}) > 1:  # ASCII and unicode parts: all as unicode
            arrays = [a.astype("U") for a in arrays]
        return cls._of(np.concatenate(arrays))

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> RequestIds: ...

    def __getitem__(self, index: int | slice) -> str | RequestIds:
        if isinstance(index, slice):
            return RequestIds._of(self._ids[index])
        return _text(self._ids[index])

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self._ids), _ITER_CHUNK):
            yield from map(_text, self._ids[start : start + _ITER_CHUNK].tolist())

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and bool(self.isin([value]).any())

    def __add__(self, other: Sequence[str]) -> RequestIds:
        return RequestIds.concat([self, other])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RequestIds):
            return len(self) == len(other) and list(self) == list(other)
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to a list, which has no hash either

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self[:3]))
        return f"RequestIds({len(self)} ids: {head}{', ...' if len(self) > 3 else ''})"

    def __reduce__(self) -> tuple[Any, ...]:  # a slice pickles only its own ids, not the array it views
        return (RequestIds._of, (self._ids.copy(),))

    def isin(self, ids: Sequence[str]) -> np.ndarray:
        """One bool per id here: is it among `ids`."""
        other = ids._ids if isinstance(ids, RequestIds) else _pack(list(ids))
        if not len(other) or not len(self._ids):
            return np.zeros(len(self._ids), dtype=bool)
        mine = self._ids
        if mine.dtype.kind != other.dtype.kind:  # compare ASCII with unicode as unicode
            mine, other = mine.astype("U"), other.astype("U")
        return np.isin(mine, other)

    def without(self, ids: Sequence[str]) -> RequestIds:
        """These ids, in order, less those among `ids` (e.g. the ones a run has sent already)."""
        return RequestIds._of(self._ids[~self.isin(ids)]) if len(ids) else self

    @property
    def nbytes(self) -> int:
        """The bytes the ids take (the array's buffer)."""
        return int(self._ids.nbytes)


def _text(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)
