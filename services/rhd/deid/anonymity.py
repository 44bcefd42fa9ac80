"""The anonymisation level of what leaves the home region: k-anonymity and l-diversity (of the label).

A study's quasi-identifiers are the values an outsider could know of a patient (age, sex, place, date of the
exam). The analysis profile releases only the few the line needs (the policy's `anonymity.released`: the age band
with the WHF 2012 cut at 20 years, and the sending hospital, which routes the results); each release falls in the
class of the releases with the same values. k is the size of the smallest class, l the fewest distinct diagnoses
in a class (distinct l-diversity), over a day's releases and cumulatively. The finer levels the policy lists are
measured the same way over the link map (home region) by `rhd privacy-report`, to show what releasing more would
cost. Nothing here holds a study: the level is reached by what is released, not by waiting.

To hold the policy's minimum k, deid withholds the quasi-identifiers the policy lets it (`anonymity.generalise`: the
hospital) from a study whose class would otherwise be too small that day: the value is released as WITHHELD, which
could be any value. A class's size is then the number of releases that could be the same patient: those with the
same values, or WITHHELD where they differ (an outsider who knows a patient's hospital cannot tell a withheld release
from one of that hospital). With nothing withheld this is the plain class size.
"""

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Class = tuple[str, ...]
WITHHELD = "*"  # a quasi-identifier generalised away: it matches every value


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
    matched = matching_sizes(sizes)
    diverse = {c: set().union(*(labels[d] for d in sizes if consistent(c, d))) for c in sizes}
    l_values = [len(found) for found in diverse.values() if found]
    return Measured(
        n=sum(sizes.values()),
        classes=len(sizes),
        k=min(matched.values()),
        l_diversity=min(l_values) if l_values else 0,
        below_k=sum(size for c, size in sizes.items() if matched[c] < min_k),
    )


def consistent(a: Class, b: Class) -> bool:
    """Whether two releases could be the same patient: each value the same, or withheld in either."""
    return all(x == y or WITHHELD in (x, y) for x, y in zip(a, b, strict=True))


def matching(counts: Mapping[Class, int], cls: Class) -> int:
    """The releases among `counts` that could be the patient released in `cls`."""
    return sum(n for other, n in counts.items() if consistent(cls, other))


def matching_sizes(counts: Mapping[Class, int]) -> dict[Class, int]:
    """Each class's size as an outsider sees it: the releases that could be any one of its patients."""
    return {cls: matching(counts, cls) for cls in counts}


def withheld(cls: Class, positions: Sequence[int]) -> Class:
    return tuple(WITHHELD if i in positions else value for i, value in enumerate(cls))


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

    def release(self, study: str, day: str, own: Class, generalise: Sequence[int], min_k: int) -> Class:
        """The class a study is released in, and counted: its own, or, while that would leave fewer than min_k of
        the day's releases able to be its patient (itself included), with the quasi-identifiers at the `generalise`
        positions withheld one more at a time (the last step is released however small, never held). A study
        released before keeps the class it had."""
        if study in self.released:
            return self.released[study][1]
        counts = self.days.get(day, Counter())
        chosen = own
        for step in range(len(generalise) + 1):
            chosen = withheld(own, generalise[:step])
            if matching(counts, chosen) + 1 >= min_k:
                break
        self.add(study, day, chosen)
        return chosen

    def k(self, day: str | None = None) -> int:
        counts = self.all if day is None else self.days.get(day, Counter())
        return min(matching_sizes(counts).values()) if counts else 0
