"""The anonymisation level: k-anonymity and l-diversity of what the line releases, and the privacy report."""

import numpy as np
from rhd.deid import ops as deid
from rhd.deid.anonymity import Census, class_of, measure
from rhd.deid.policy import load_policy
from rhd.local.privacy_report import label_name, levels, report
from rhd.synth.generator import SynthConfig, _metadata
from rhd.v1 import rhd_pb2 as pb

KEY = bytes(range(32))
POLICY = load_policy()
ANALYSIS = POLICY.profile("analysis")


def test_k_is_the_smallest_class_and_l_the_fewest_distinct_answers():
    rows = [(("0-20", "H001"), "normal")] * 3 + [(("0-20", "H001"), "definite"), (("0-20", "H002"), "normal")]
    m = measure(rows, min_k=2)
    assert (m.n, m.classes, m.k, m.l_diversity, m.below_k) == (5, 2, 1, 1, 1)
    assert not m.holds(2) and m.holds(1)
    # A study not diagnosed yet counts in its class, not in its diversity.
    m = measure([(("a",), ""), (("a",), "normal"), (("a",), "borderline")], min_k=3)
    assert (m.k, m.l_diversity, m.below_k) == (3, 2, 0)
    assert measure([], 5).holds(5)
    assert class_of({"age_band": "0-20"}, ("age_band", "sex")) == ("0-20", "")


def test_the_census_counts_each_day_apart_and_once_per_study():
    census = Census()
    for study, day, cls in [("P1", "d1", ("x",)), ("P2", "d1", ("x",)), ("P3", "d2", ("x",)), ("P4", "d2", ("y",))]:
        census.add(study, day, cls)
    census.add("P1", "d2", ("x",))  # published again: still one release, on its first day
    assert (census.k(), census.k("d1"), census.k("d2"), census.k("d3")) == (1, 2, 1, 0)
    assert census.all == {("x",): 3, ("y",): 1}


def test_a_withheld_value_could_be_any_so_its_release_counts_in_every_class_it_matches():
    rows = [(("0-20", "H001"), "normal"), (("0-20", "*"), "definite"), (("0-20", "H002"), "normal")]
    m = measure(rows, min_k=2)
    # H001's patient could be its own release or the withheld one: 2; the withheld one could be any of the three.
    assert (m.k, m.l_diversity, m.below_k) == (2, 2, 0)
    assert measure([(("0-20", "H001"), "normal"), (("21+", "*"), "normal")], min_k=2).k == 1  # the age still differs


def test_deid_withholds_the_hospital_while_a_class_would_be_too_small_and_never_holds_a_study():
    census, k = Census(), 3
    own = {f"P{i}": ("0-20", "H001" if i < 6 else "H002") for i in range(8)}
    released = {p: census.release(p, "d1", cls, (1,), k) for p, cls in own.items()}
    # The first two of the day are withheld (with them, fewer than 3 releases could be their patient); from then
    # on the withheld ones make every hospital's class large enough.
    assert [released[f"P{i}"][1] for i in range(8)] == ["*", "*", "H001", "H001", "H001", "H001", "H002", "H002"]
    assert census.k("d1") >= k and len(census.released) == 8
    # A study published again keeps the class it was released in; a new day starts withholding again.
    assert census.release("P0", "d2", ("0-20", "H001"), (1,), k) == ("0-20", "*")
    assert census.release("P9", "d2", ("0-20", "H001"), (1,), k) == ("0-20", "*")
    # With nothing it may withhold, the study is still released (and k measured below the minimum).
    assert census.release("P10", "d3", ("21+", "H003"), (), k) == ("21+", "H003") and census.k("d3") == 1


def test_the_policy_withholds_only_released_quasi_identifiers_and_never_the_age():
    assert POLICY.anonymity.generalise == ("hospital_id",)
    assert POLICY.anonymity.generalise_positions == (POLICY.anonymity.released.index("hospital_id"),)
    study = deid.DeidentifiedStudy(
        pb.StudyUpload(hospital_id="H001", metadata={"age_band": "0-20", "hospital_id": "H001"}), {"released": {}}, []
    )
    deid.release_as(study, ("0-20", "*"), POLICY)
    assert study.upload.hospital_id == study.upload.metadata["hospital_id"] == "*"
    assert study.upload.metadata["age_band"] == "0-20"
    assert study.link["released"] == {"age_band": "0-20", "hospital_id": "*"}


def _released(n: int) -> list[dict]:
    """Links as deid writes them for n studies of the generator's default demographics (no videos needed)."""
    links, census, a = [], Census(), POLICY.anonymity
    for i in range(n):
        meta = _metadata(f"S{i:04d}", np.random.default_rng(i), SynthConfig(), 60.0)
        fields = {k: str(v) for k, v in meta.items()}
        ctx = deid.study_context(KEY, ANALYSIS, fields["hospital_id"], fields)
        out = deid.deidentify_fields(fields, POLICY, ctx)
        own = class_of(deid.released_quasi_identifiers(out, fields["hospital_id"], POLICY), a.released)
        day = f"2026-12-0{1 + i % 2}"
        released = census.release(f"P{i}", day, own, a.generalise_positions, a.min_k)
        quasi = deid.quasi_identifiers(fields, ctx, POLICY, fields["hospital_id"])
        values = dict(zip(a.released, released, strict=True))
        links.append({"pseudonym": f"P{i}", "released": values, "quasi": quasi, "day": day})
    return links


def test_the_default_profile_holds_k_5_at_the_generators_demographics_and_finer_releases_would_not():
    links = _released(200)
    labels = {f"P{i}": ("normal", "borderline", "definite")[i % 3] for i in range(200)}
    measured = levels(POLICY, links, labels)
    assert measured.released.n == 200 and measured.released.k >= POLICY.anonymity.min_k == 5
    # Each day's first four went out with the hospital withheld; then every hospital's class was large enough.
    assert measured.withheld == 8
    assert measured.released.l_diversity == 3
    assert all(m.k >= 5 for m in measured.days.values()) and len(measured.days) == 2
    # Sex, state and the study's month would split the classes below k: why they stay home.
    finest = measured.finer[-1][1]
    assert finest.k < 5 and finest.below_k > 0 and finest.classes > measured.released.classes
    # The link map's quasi-identifiers are generalised values, not identifiers.
    assert set(links[0]["quasi"]) == {"age_band", "hospital_id", "sex", "state", "study_month"}
    assert links[0]["quasi"]["age_band"] in ("5-9", "10-14", "15-20")


def test_the_report_names_each_article_with_the_measured_figures_and_the_gaps():
    links = _released(40)
    measured = levels(POLICY, links, {})
    audit = {"when": "2026-12-05T00:00:00+00:00", "studies": 40, "records": 1000, "hits": 0}
    text = report(POLICY, measured, audit, "analysis")
    for article in ("Art. 6 ", "Art. 11 ", "Art. 12 ", "Art. 13 ", "Art. 46 ", "Art. 25 ", "Art. 32 ", "Art. 35 "):
        assert article in text
    assert f"k = {measured.released.k} cumulatively" in text and "**0 hits**" in text
    assert f"{measured.withheld} of 40 releases were" in text
    assert POLICY.digest[:12] in text
    # Too few studies for k: said as a gap; no audit: said too.
    few = levels(POLICY, links[:3], {})  # three studies, all withheld: one class of 3
    text = report(POLICY, few, None, "analysis")
    assert f"k = {few.released.k} is below the minimum 5" in text and "no audit recorded" in text


def test_the_label_a_class_counts():
    assert label_name(pb.Diagnosis(label=pb.LABEL_DEFINITE)) == "definite"
    assert label_name(pb.Diagnosis(referred=True)) == "referred"
    assert label_name(pb.Diagnosis()) == ""
