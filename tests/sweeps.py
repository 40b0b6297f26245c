"""The shape every `experiments.lr_selection` sweep must have, text or image policy (shared by the tests that run one):
each rate of the grids at the default length, then the grid's longer runs at the best rate, and the winners chosen."""
from aa_lib import experiments as E


def check_sweep(sel: dict, sizes: E.Sizes):
    ppo_runs = [r for r in sel["sweep"] if r["method"] == "ppo"]
    assert sorted(r["lr"] for r in ppo_runs if r["rollouts"] == sizes.ppo_episodes) == sorted(sizes.ppo_lr_grid)
    best_rate = max((r for r in ppo_runs if r["rollouts"] == sizes.ppo_episodes),
                    key=lambda r: r["validation_score"])["lr"]
    assert [(r["lr"], r["rollouts"]) for r in ppo_runs if r["rollouts"] != sizes.ppo_episodes] == [
        (best_rate, n) for n in sizes.ppo_episodes_grid]
    winner = max(ppo_runs, key=lambda r: r["validation_score"])
    assert (sel["ppo_lr"], sel["ppo_episodes"]) == (winner["lr"], winner["rollouts"])
    for pairs, keys in (("binary", ("dpo_lr", "dpo_steps")), ("synthesized", ("dpo_llf_lr", "dpo_llf_steps"))):
        dpo_runs = [r for r in sel["sweep"] if r["method"] == "dpo" and r["pairs"] == pairs]
        if pairs == "synthesized" and not dpo_runs:
            continue  # smoke sizes: the oracle's synthesis on a few rows can keep no pair
        assert sorted(r["steps"] for r in dpo_runs) == sorted(
            [sizes.dpo_steps] * len(sizes.dpo_lr_grid) + list(sizes.dpo_steps_grid))
        winner = max(dpo_runs, key=lambda r: r["validation_score"])
        assert (sel[keys[0]], sel[keys[1]]) == (winner["lr"], winner["steps"])
