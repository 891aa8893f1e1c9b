import math

from satpipe.train.report import (
    check_claims,
    claims_markdown,
    markdown_table,
    robustness_plot,
    source_claim,
    summarize,
    time_table,
)


def _run(variant, seed, clean, pgd, time_s, row=None, group="weak"):
    return {
        "row": row or variant,
        "variant": variant,
        "seed": seed,
        "group": group,
        "clean": clean,
        "pgd": {str(k): v for k, v in pgd.items()},
        "fgsm": {},
        "train_time_s": time_s,
    }


def _grid():
    runs = []
    for seed, jitter in enumerate((0.0, 2.0)):
        runs += [
            _run("original", seed, 90 + jitter, {1: 40 + jitter, 2: 20}, 10.0),
            _run("original-noise", seed, 89, {1: 45 + jitter, 2: 25}, 10.2),
            _run("sat", seed, 88, {1: 50 + jitter, 2: 30}, 10.3),
            _run("pgd", seed, 80, {1: 70, 2: 60}, 60.0),
            _run("pgd-noise", seed, 80, {1: 71, 2: 61}, 35.0),
            _run("pgd-sat", seed, 80, {1: 72, 2: 59}, 35.0),
        ]
    return runs


def test_summary_is_mean_and_population_std_over_seeds():
    s = summarize(_grid())
    assert s["original"]["seeds"] == [0, 1]
    assert math.isclose(s["original"]["clean"]["mean"], 91.0)
    assert math.isclose(s["original"]["clean"]["std"], 1.0)
    assert math.isclose(s["sat"]["pgd"]["1"]["mean"], 51.0)


def test_table_bolds_the_best_mean_per_column_in_paper_order():
    table = markdown_table(summarize(_grid()))
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Method | clean | ε=1/255 | ε=2/255")
    names = [line.split("|")[1].strip() for line in lines[2:]]
    assert names == ["original", "original-noise", "sat", "pgd", "pgd-noise", "pgd-sat"]
    pgd_sat = next(line for line in lines if line.startswith("| pgd-sat"))
    assert "**72.00 ± 0.00**" in pgd_sat  # best at eps=1
    assert "**" not in pgd_sat.split("|")[4]  # not best at eps=2 (pgd-noise is)


def test_claims_report_what_held_and_what_did_not():
    claims = {c["claim"]: c for c in check_claims(summarize(_grid()))}
    sat_claim = next(c for k, c in claims.items() if k.startswith("SAT >"))
    assert sat_claim["held"] is True
    pgd_claim = next(c for k, c in claims.items() if k.startswith("PGD-SAT >"))
    assert pgd_claim["held"] is False  # at eps=2 PGD-SAT (59) < PGD+Noise (61)
    assert pgd_claim["detail"]["1"]["held"] is True
    cheaper = next(c for k, c in claims.items() if "trains faster than PGD" in k)
    assert cheaper["held"] is True and math.isclose(cheaper["detail"]["ratio"], 35 / 60)
    same = next(c for k, c in claims.items() if k.startswith("SAT costs"))
    assert same["held"] is True

    text = claims_markdown(list(claims.values()))
    pgd_section = text.split("## PGD-SAT >")[1].split("##")[0]
    assert pgd_section.startswith(" PGD + Uniform-Noise > PGD (PGD accuracy at every eps): did NOT")
    rows = [line for line in pgd_section.splitlines() if line.startswith("| ") and "ε" not in line]
    assert [r.split("|")[-2].strip() for r in rows] == ["yes", "no"]  # eps 1 ordered, eps 2 not
    assert "trains faster than PGD**: held (ratio 0.58)" in text


def test_source_claim_and_time_table_and_plot(tmp_path):
    runs = _grid() + [
        _run("sat", 0, 85, {1: 55, 2: 33}, 10, row="SAT adv-smoothgrad", group="methods"),
        _run("sat", 0, 85, {1: 52, 2: 34}, 10, row="SAT std-smoothgrad", group="methods"),
    ]
    s = summarize(runs)
    (claim,) = source_claim(s, [("SAT adv-smoothgrad", "SAT std-smoothgrad")])
    assert claim["held"] is False and claim["detail"]["1"]["adv"] == 55
    times = time_table(s)
    assert "| pgd-sat | 35.0 | 3.50 | 0.58 | – |" in times
    png = robustness_plot(s, tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
