"""The anonymisation level of what leaves the home region: k-anonymity and l-diversity (of the label).

A study's quasi-identifiers are the values an outsider could know of a patient (age, sex, place, date of the
exam). The analysis profile releases only the few the line needs (the policy's `anonymity.released`: the age band
with the WHF 2012 cut at 20 years, and the sending hospital, which routes the results); each release falls in the
class of the releases with the same values. k is the size of the smallest class, l the fewest distinct diagnoses
in a class (distinct l-diversity), over a day's releases and cumulatively. The finer levels the policy lists are
measured the same way over the link map (home region) by `rhd privacy-report`, to show what releasing more would
cost. Nothing here holds a study: the level is reached by what is released, not by waiting.
"""

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Class = tuple[str, ...]


def class_of(quasi: Mapping[str, str], names: Sequence[str]) -> Class:
    """The values of the named quasi-identifiers ("" where one is not known: unknown is a value of its own)."""
    return tuple(str(quasi.get(name, "")) for name in names)


@dataclass(frozen=True)
class Measured:
    n: int  # studies
    classes: int
    k: int  # the smallest class (0 when there is nothing)
    l_diversity: int  # the fewest distinct known labels in a class (0 when no label is known)
    below_k: int  # studies in classes smaller than the minimum k

    def holds(self, min_k: int) -> bool:
        return self.n == 0 or self.k >= min_k


def measure(rows: Iterable[tuple[Class, str]], min_k: int) -> Measured:
    """k and l of (class, label) rows; a label "" (not diagnosed yet) counts in the class but not in l."""
    sizes: Counter[Class] = Counter()
    labels: dict[Class, set[str]] = defaultdict(set)
    for cls, label in rows:
        sizes[cls] += 1
        if label:
            labels[cls].add(label)
    if not sizes:
        return Measured(0, 0, 0, 0, 0)
    l_values = [len(labels[c]) for c in sizes if labels[c]]
    return Measured(
        n=sum(sizes.values()),
        classes=len(sizes),
        k=min(sizes.values()),
        l_diversity=min(l_values) if l_values else 0,
        below_k=sum(size for size in sizes.values() if size < min_k),
    )


class Census:
    """What deid has released, per UTC day and in all: its gauge of k (labels are not known at release). A study is
    counted once however often it is redelivered or published again (by its pseudonym); the counts are kept per
    class, so k costs the number of classes, not of studies. Built again from the link map when deid starts, where
    an erased study's tombstone has taken its link out."""

    def __init__(self) -> None:
        self.released: dict[str, tuple[str, Class]] = {}  # study pseudonym -> (day, class)
        self.all: Counter[Class] = Counter()
        self.days: dict[str, Counter[Class]] = defaultdict(Counter)

    def add(self, study: str, day: str, cls: Class) -> None:
        if study in self.released:
            return
        self.released[study] = (day, cls)
        self.all[cls] += 1
        self.days[day][cls] += 1

    def k(self, day: str | None = None) -> int:
        counts = self.all if day is None else self.days.get(day, Counter())
        return min(counts.values()) if counts else 0
