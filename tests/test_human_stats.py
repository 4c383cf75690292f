"""Preference statistics, agreement and Bradley–Terry on hand-made vote tables with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from evalkit.human.agreement import (
    agreement_table,
    fleiss_kappa,
    krippendorff_alpha_nominal,
    position_bias,
)
from evalkit.human.bradley_terry import (
    bradley_terry_with_intervals,
    fit_bradley_terry,
    win_matrices,
)
from evalkit.human.stats import cluster_bootstrap, count_table, preference_stats, wilson_interval


def test_70_10_20_split_gives_those_proportions_and_win_rate():
    # 20 prompts, each with 7 votes for A, 1 tie, 2 for B.
    table = np.tile([7, 1, 2], (20, 1))
    s = preference_stats(table, n_resamples=500)
    assert s["n_votes"] == 200 and s["n_items"] == 20
    assert s["p_a"] == pytest.approx(0.7)
    assert s["p_tie"] == pytest.approx(0.1)
    assert s["p_b"] == pytest.approx(0.2)
    assert s["win_rate_a"] == pytest.approx(0.75)
    # Identical prompts: resampling prompts cannot move anything.
    assert s["p_a_ci"] == pytest.approx([0.7, 0.7])
    assert s["counts"] == {"A": 140, "tie": 20, "B": 40}


def test_70_10_20_split_over_varied_prompts_has_interval_around_it():
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(100):
        rows.append(np.bincount(rng.choice(3, size=10, p=[0.7, 0.1, 0.2]), minlength=3))
    s = preference_stats(np.array(rows), n_resamples=1000)
    assert s["p_a_ci"][0] < s["p_a"] < s["p_a_ci"][1]
    assert 0.6 < s["p_a"] < 0.8
    assert s["p_a"] + s["p_tie"] + s["p_b"] == pytest.approx(1.0)
    assert 0.0 < s["p_a_ci"][1] - s["p_a_ci"][0] < 0.12


def test_bootstrap_is_clustered_by_prompt_not_by_vote():
    # Half the prompts are all-A, half all-B: prompts disagree, so the clustered interval
    # is much wider than a vote-level binomial interval would be.
    table = np.array([[10, 0, 0]] * 10 + [[0, 0, 10]] * 10)
    s = preference_stats(table, n_resamples=2000)
    lo, hi = s["p_a_ci"]
    vote_level = wilson_interval(100, 200)
    assert (hi - lo) > 2 * (vote_level[1] - vote_level[0])


def test_cluster_bootstrap_is_reproducible_with_a_seed():
    counts = np.random.default_rng(0).integers(0, 5, size=(30, 3))
    f = lambda s: s[:, :1] / s.sum(axis=1, keepdims=True)  # noqa: E731
    a = cluster_bootstrap(counts, f, n_resamples=300, seed=7)
    b = cluster_bootstrap(counts, f, n_resamples=300, seed=7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_count_table_orients_votes_to_the_pair():
    votes = [
        {"item_id": "x", "preferred": "r0"},
        {"item_id": "x", "preferred": None},
        {"item_id": "y", "preferred": "r1"},
    ]
    t = count_table(votes, ["x", "y"], "r0", "r1")
    assert t.tolist() == [[1, 1, 0], [0, 0, 1]]


def test_perfectly_agreeing_raters_give_kappa_and_alpha_of_one():
    table = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 5], [5, 0, 0]])
    assert fleiss_kappa(table) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal(table) == pytest.approx(1.0)


def test_fleiss_kappa_matches_the_textbook_example():
    # Fleiss (1971) as reproduced on Wikipedia: 10 subjects, 14 raters, 5 categories, kappa 0.210.
    t = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    assert fleiss_kappa(t) == pytest.approx(0.2099, abs=1e-4)


def test_krippendorff_alpha_matches_the_published_nominal_example():
    # Krippendorff (2011), 4 observers x 12 units with missing values: alpha = 0.743.
    data = [
        [1, 1, None, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4],
        [4, 4, 4, 4], [1, 1, 2, 1], [2, 2, 2, 2], [None, 5, 5, 5], [None, None, 1, 1], [None, None, 3, None],
    ]  # fmt: skip
    table = np.array([[sum(x == c for x in row) for c in range(1, 6)] for row in data])
    assert krippendorff_alpha_nominal(table) == pytest.approx(0.743, abs=1e-3)


def test_agreement_is_undefined_rather_than_invented_for_single_ratings():
    assert fleiss_kappa(np.array([[1, 0, 0], [0, 1, 0]])) is None
    assert krippendorff_alpha_nominal(np.array([[1, 0, 0]])) is None


def test_systematic_disagreement_gives_negative_alpha():
    table = np.array([[1, 0, 1], [1, 0, 1], [1, 0, 1]])
    assert krippendorff_alpha_nominal(table) < 0
    assert fleiss_kappa(table) < 0


def test_agreement_table_counts_raters_per_task_in_pair_orientation():
    votes = [
        {"task_id": "p0:x", "preferred": "r0"},
        {"task_id": "p0:x", "preferred": "r0"},
        {"task_id": "p0:y", "preferred": None},
        {"task_id": "p0:y", "preferred": "r1"},
    ]
    t = agreement_table(votes, {"p0:x": "r0", "p0:y": "r0"})
    assert sorted(t.tolist()) == [[0, 1, 1], [2, 0, 0]]


def test_rater_who_always_picks_left_has_position_bias_one():
    votes = [{"choice": "A"} for _ in range(30)]
    pb = position_bias(votes)
    assert pb["left_win_rate"] == 1.0
    assert pb["p_value"] < 1e-6
    assert pb["ci"][0] > 0.85


def test_position_bias_ignores_ties_and_is_half_for_balanced_raters():
    votes = [{"choice": c} for c in ["A", "B"] * 10 + ["tie"] * 5]
    pb = position_bias(votes)
    assert pb["left_win_rate"] == 0.5 and pb["ties"] == 5 and pb["p_value"] == pytest.approx(1.0)


def test_bradley_terry_two_models_matches_the_closed_form():
    ratings = fit_bradley_terry(np.array([[0.0, 7.0], [3.0, 0.0]]))
    assert ratings[0] - ratings[1] == pytest.approx(400 * np.log10(7 / 3), abs=0.01)
    assert ratings.mean() == pytest.approx(1000.0)


def test_bradley_terry_counts_ties_as_half_wins():
    # 4 wins, 2 ties, 4 losses is a dead heat.
    ratings = fit_bradley_terry(np.array([[0.0, 5.0], [5.0, 0.0]]))
    assert ratings == pytest.approx([1000.0, 1000.0])


def test_bradley_terry_recovers_the_ordering_of_simulated_models():
    true_elo = np.array([900.0, 1000.0, 1050.0, 1250.0])
    rng = np.random.default_rng(3)
    outcomes = []
    for item in range(120):
        for _ in range(8):
            i, j = rng.choice(4, size=2, replace=False)
            p = 1 / (1 + 10 ** ((true_elo[j] - true_elo[i]) / 400))
            u = rng.random()
            outcomes.append((item, int(i), int(j), 0.5 if u < 0.1 else float(rng.random() < p)))
    w = win_matrices(outcomes, 120, 4)
    res = bradley_terry_with_intervals(w, ["m0", "m1", "m2", "m3"], n_resamples=300)
    assert res["ranking"] == ["m3", "m2", "m1", "m0"]
    est = np.array([res["ratings"][f"m{k}"]["rating"] for k in range(4)])
    # Differences recovered within sampling error (ties shrink them slightly).
    assert np.abs((est - est.mean()) - (true_elo - true_elo.mean())).max() < 60
    for k in range(4):
        lo, hi = res["ratings"][f"m{k}"]["ci"]
        assert lo <= est[k] <= hi


def test_bradley_terry_stays_finite_when_one_model_wins_everything():
    ratings = fit_bradley_terry(np.array([[0.0, 20.0], [0.0, 0.0]]))
    assert np.isfinite(ratings).all() and ratings[0] > ratings[1] + 400


def test_bradley_terry_anchor_puts_the_baseline_at_1000():
    ratings = fit_bradley_terry(np.array([[0, 6, 8], [4, 0, 7], [2, 3, 0.0]]), anchor=1)
    assert ratings[1] == pytest.approx(1000.0)
