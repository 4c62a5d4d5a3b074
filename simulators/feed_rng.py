"""The generator the record builder draws from, apart because its contract is strict: each
draw must consume the Mersenne Twister exactly as ``random.Random``'s own does."""

from __future__ import annotations

import _random
import random
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class Rng(random.Random):
    """``random.Random`` plus exact, cheaper forms of the draws the builder makes.

    ``below(n)`` is the draw ``randrange``/``choice`` make (``Random._randbelow`` for the
    Mersenne Twister) without their argument checking, and ``sample_k`` is ``Random.sample``'s
    algorithm for the small ``k`` used here; both consume the generator exactly like the
    originals, so records stay byte-identical to those generated with them (a recorded seed
    keeps replaying the same feed). The builder spends most of its time drawing numbers.
    """

    @classmethod
    def seeded(cls, seed: int) -> Rng:
        """``cls(seed)``, minus ``Random.__init__``/``Random.seed``'s Python-level argument
        handling: for an int they come down to this C seeding (and ``gauss()``'s cache,
        which nothing here uses)."""
        rng = cls.__new__(cls)
        _random.Random.seed(rng, seed)
        return rng

    def shuffle_list(self, x: list[Any]) -> None:
        """``shuffle(x)``, the same swaps."""
        below = self.below
        for i in range(len(x) - 1, 0, -1):
            j = below(i + 1)
            x[i], x[j] = x[j], x[i]

    def below(self, n: int) -> int:
        """``randrange(n)``: uniform in ``[0, n)``, ``n > 0``."""
        getrandbits = self.getrandbits
        k = n.bit_length()
        r = getrandbits(k)
        while r >= n:
            r = getrandbits(k)
        return r

    def sample_k(self, population: Sequence[T], k: int) -> list[T]:
        """``sample(population, k)`` for ``k <= 5``: the same draws and the same picks."""
        n = len(population)
        below = self.below
        if k == 1:  # both paths below come down to this for one pick
            return [population[below(n)]]
        result: list[T] = []
        if n <= 21:  # sample()'s small-population path (a pool list beats a set)
            pool = list(population)
            for j in range(k):
                x = below(n - j)
                result.append(pool[x])
                pool[x] = pool[n - j - 1]
            return result
        selected: set[int] = set()
        for _ in range(k):
            x = below(n)
            while x in selected:
                x = below(n)
            selected.add(x)
            result.append(population[x])
        return result
