"""The de-identification policy file (policy.yaml beside this module, or the operator's own): profiles of DICOM
PS3.15 Annex E actions, read once."""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_POLICY = Path(__file__).with_name("policy.yaml")
ACTIONS = frozenset("KXZDUC")
HOWS = {"D": frozenset({"", "pseudonym", "shifted", "band", "month"})}

# DICOM PS3.16 CID 7050 (De-identification Method): the codes a profile may record, with their meanings.
OPTION_MEANINGS = {
    113100: "Basic Application Confidentiality Profile",
    113101: "Clean Pixel Data Option",
    113102: "Clean Recognizable Visual Features Option",
    113103: "Clean Graphics Option",
    113104: "Clean Structured Content Option",
    113105: "Clean Descriptors Option",
    113106: "Retain Longitudinal Temporal Information Full Dates Option",
    113107: "Retain Longitudinal Temporal Information Modified Dates Option",
    113108: "Retain Patient Characteristics Option",
    113109: "Retain Device Identity Option",
    113110: "Retain UIDs Option",
    113111: "Retain Safe Private Option",
    113112: "Retain Institution Identity Option",
}


class PolicyError(ValueError):
    """The policy file is not a valid policy."""


@dataclass(frozen=True)
class Action:
    code: str  # K X Z D U C (PS3.15 Table E.1-1)
    how: str = ""  # for D: pseudonym, shifted, band, month, or "" (a fixed dummy)

    @classmethod
    def parse(cls, text: str) -> "Action":
        code, _, how = str(text).strip().partition(" ")
        how = how.strip()
        if code not in ACTIONS or how not in HOWS.get(code, {""}):
            raise PolicyError(
                f"unknown action {text!r}: expected one of K X Z D U C, D with pseudonym/shifted/band/month"
            )
        return cls(code, how)


REMOVE = Action("X")
KEEP = Action("K")


@dataclass(frozen=True)
class Profile:
    name: str
    region: str  # "home" or "gpu": where what it makes may go
    clean_pixels: bool
    options: tuple[int, ...]
    age_bands: tuple[int, ...] = ()
    keep_all: bool = False
    attributes: dict[str, Action] = field(default_factory=dict)

    def action(self, keyword: str) -> Action:
        """What the profile does with an attribute (DICOM keyword, or a sidecar field's own name): X when unnamed."""
        return KEEP if self.keep_all else self.attributes.get(keyword, REMOVE)

    def method(self, digest: str) -> str:
        """Deidentification Method (0012,0063): what was done, under which policy file."""
        return f"rhd deid, profile {self.name}, policy sha256 {digest[:12]}"


@dataclass(frozen=True)
class Anonymity:
    """The anonymisation level the policy asks of what leaves the region (see rhd.deid.anonymity)."""

    min_k: int = 1
    released: tuple[str, ...] = ()  # the quasi-identifiers the line's profile releases with each study
    levels: tuple[tuple[str, ...], ...] = ()  # finer releases, measured for the report
    fine_age_bands: tuple[int, ...] = ()  # the age band the link map keeps, for those levels
    generalise: tuple[str, ...] = ()  # released quasi-identifiers deid may withhold, in this order, to hold min_k

    @property
    def generalise_positions(self) -> tuple[int, ...]:
        return tuple(self.released.index(name) for name in self.generalise)


@dataclass(frozen=True)
class Policy:
    fields: dict[str, str]  # sidecar field -> DICOM keyword
    derived: dict[str, str]  # DICOM keyword -> the line's name for its generalised value (age_band, study_month)
    private: dict[tuple[str, int], str]  # (private creator, element byte) -> the name a profile keeps it by
    profiles: dict[str, Profile]
    digest: str  # sha256 of the policy file
    raw_retention_s: float = 86_400.0  # sealed raw blobs are deleted this long after they were written
    anonymity: Anonymity = Anonymity()

    def profile(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except KeyError:
            raise PolicyError(f"no profile {name!r} in the policy (has {', '.join(sorted(self.profiles))})") from None

    def keyword(self, field_name: str) -> str:
        return self.fields.get(field_name, field_name)

    def field_name(self, keyword: str) -> str:
        """The line's name for an attribute: the sidecar field it comes from, or the keyword itself."""
        for name, kw in self.fields.items():
            if kw == keyword:
                return name
        return keyword


def _profile(name: str, raw: dict) -> Profile:
    options = tuple(int(c) for c in raw.get("options", []))
    unknown = [c for c in options if c not in OPTION_MEANINGS]
    if unknown:
        raise PolicyError(f"profile {name}: unknown option code(s) {unknown}")
    region = str(raw.get("region", ""))
    if region not in ("home", "gpu"):
        raise PolicyError(f"profile {name}: region must be home or gpu, not {region!r}")
    bands = tuple(int(b) for b in raw.get("age_bands", []))
    if list(bands) != sorted(set(bands)):
        raise PolicyError(f"profile {name}: age_bands must be increasing")
    return Profile(
        name=name,
        region=region,
        clean_pixels=bool(raw.get("clean_pixels", True)),
        options=options,
        age_bands=bands,
        keep_all=bool(raw.get("keep_all", False)),
        attributes={str(k): Action.parse(v) for k, v in (raw.get("attributes") or {}).items()},
    )


def load_policy(path: Path | None = None) -> Policy:
    path = Path(path or DEFAULT_POLICY)
    text = path.read_bytes()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path.name}: not YAML: {exc}") from None
    if not isinstance(raw, dict) or raw.get("version") != 1 or not raw.get("profiles"):
        raise PolicyError(f"{path.name}: expected version 1 with profiles")
    private = {
        (str(creator), int(str(element), 16)): str(name)
        for creator, elements in (raw.get("private") or {}).items()
        for element, name in elements.items()
    }
    return Policy(
        fields={str(k): str(v) for k, v in (raw.get("fields") or {}).items()},
        derived={str(k): str(v) for k, v in (raw.get("derived") or {}).items()},
        private=private,
        profiles={str(n): _profile(str(n), p) for n, p in raw["profiles"].items()},
        digest=hashlib.sha256(text).hexdigest(),
        raw_retention_s=float(raw.get("raw_retention_hours", 24)) * 3600.0,
        anonymity=_anonymity(raw.get("anonymity") or {}),
    )


def _anonymity(raw: dict) -> Anonymity:
    out = Anonymity(
        min_k=int(raw.get("min_k", 1)),
        released=tuple(str(q) for q in raw.get("released", [])),
        levels=tuple(tuple(str(q) for q in level) for level in raw.get("levels", [])),
        fine_age_bands=tuple(int(b) for b in raw.get("fine_age_bands", [])),
        generalise=tuple(str(q) for q in raw.get("generalise", [])),
    )
    if out.min_k < 1 or any(not set(out.released) <= set(level) for level in out.levels):
        raise PolicyError("anonymity: min_k must be at least 1 and every level must hold the released ones")
    if not set(out.generalise) <= set(out.released):
        raise PolicyError("anonymity: only released quasi-identifiers can be generalised")
    return out
