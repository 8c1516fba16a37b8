"""A split's token files read as one sequence, without concatenating them.

A split of a shard folder is several ``.bin`` files. Copying them into one array costs the
whole split in RAM in every process; :class:`TokenView` instead keeps the files memory-mapped
and cuts slices and batch windows from them directly, a window possibly straddling two files.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class TokenView:
    """Read-only 1-D token sequence made of ``parts`` (e.g. memmaps) laid end to end.

    ``view[a:b]`` (step 1) is a view of one part when the range lies in it, else a copy of just
    that range; ``view[i]`` is one token; :meth:`windows` gathers a batch of equal-length rows.
    ``np.asarray(view)`` materialises everything: meant for small data and tests only.
    """

    def __init__(self, parts: Iterable[np.ndarray], dtype: np.dtype | None = None):
        arrays = [np.asanyarray(p) for p in parts]
        if any(a.ndim != 1 for a in arrays):
            raise ValueError("TokenView parts must be 1-D arrays")
        if dtype is None:
            if not arrays:
                raise ValueError("an empty TokenView needs a dtype")
            dtype = arrays[0].dtype
        self.dtype = np.dtype(dtype)
        if any(a.dtype != self.dtype for a in arrays):
            raise ValueError(f"TokenView parts must all be {self.dtype}")
        self.parts: tuple[np.ndarray, ...] = tuple(a for a in arrays if len(a))
        lengths = np.array([len(a) for a in self.parts], dtype=np.int64)
        self._lengths = lengths
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # part i is [starts[i], starts[i+1])
        self._len = int(self._starts[-1])

    @classmethod
    def of(cls, tokens: TokenView | np.ndarray) -> TokenView:
        """``tokens`` itself if already a view, else a one-part view of the array (no copy)."""
        return tokens if isinstance(tokens, TokenView) else cls([np.asarray(tokens).reshape(-1)])

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"TokenView({self._len:,} {self.dtype} tokens in {len(self.parts)} part(s))"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.asarray(self[:], dtype=dtype)
        return out.copy() if copy else out

    def __getitem__(self, key: int | slice) -> np.ndarray | np.generic:
        if isinstance(key, slice):
            start, stop, step = key.indices(self._len)
            if step != 1:
                raise IndexError("TokenView slices take no step")
            return self._range(start, max(start, stop))
        if isinstance(key, (int, np.integer)):
            i = int(key) + self._len if key < 0 else int(key)
            if not 0 <= i < self._len:
                raise IndexError(f"index {int(key)} is out of range for {self._len} tokens")
            part = int(np.searchsorted(self._starts, i, side="right")) - 1
            return self.parts[part][i - self._starts[part]]
        raise TypeError(f"TokenView indices are ints or slices, not {type(key).__name__}")

    def _range(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` with ``0 <= start <= stop <= len``: a view within one part, else a copy."""
        if stop == start:
            return np.zeros(0, dtype=self.dtype)
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        last = int(np.searchsorted(self._starts, stop, side="left")) - 1
        pieces = [
            self.parts[p][max(start - self._starts[p], 0) : min(stop - self._starts[p], self._lengths[p])]
            for p in range(first, last + 1)
        ]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Rows ``view[s : s + length]`` for each ``s`` in ``starts``: a ``(len(starts), length)`` array.

        One fancy-indexing gather per part the batch touches; only windows that straddle two
        parts (at most one per part boundary) are copied one by one.
        """
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        if len(starts) and (starts.min() < 0 or starts.max() + length > self._len):
            raise IndexError(f"windows of {length} tokens at {starts.min()}..{starts.max()} exceed {self._len} tokens")
        out = np.empty((len(starts), length), dtype=self.dtype)
        part = np.searchsorted(self._starts, starts, side="right") - 1
        local = starts - self._starts[part]
        inside = local + length <= self._lengths[part]
        offsets = np.arange(length)
        for p in np.unique(part[inside]):
            rows = np.flatnonzero(inside & (part == p))
            out[rows] = self.parts[p][local[rows, None] + offsets]
        for row in np.flatnonzero(~inside):
            out[row] = self._range(int(starts[row]), int(starts[row]) + length)
        return out
