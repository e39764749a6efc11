"""Named budgets (kwta.budgets): one place for every cut budget, flags that override one value, and the cost
of a budget stated before it runs."""

import pytest
import torch
from torch import nn

import attack
from kwta.attacks import ATTACKS, TABLE_SUITE, AttackSettings
from kwta.budgets import BUDGETS, budget, estimate, estimate_lines


def test_the_standard_budget_is_the_published_one_and_the_demo_cuts_only_sizes():
    assert BUDGETS["standard"] == AttackSettings()
    demo = BUDGETS["demo"]
    assert (demo.pgd_restarts, demo.autoattack_iterations, demo.bpda_iterations, demo.square_queries,
            demo.es_schedule, demo.eot_samples) == (2, 20, 20, 500, ((10, 20),), 4)
    assert demo.pgd_steps == AttackSettings().pgd_steps and demo.bpda_temperatures == AttackSettings().bpda_temperatures
    assert budget("smoke", pgd_steps=7).pgd_steps == 7 and BUDGETS["smoke"].pgd_steps == 2
    with pytest.raises(ValueError, match="budget must be one of standard, demo, smoke"):
        budget("full")


def test_attack_py_takes_a_budget_and_flags_override_one_value_of_it():
    args = attack.parse_args(["--checkpoint", "c.pt", "--budget", "demo", "--restarts", "3"])
    assert args.settings == budget("demo", pgd_restarts=3)
    assert attack.parse_args(["--checkpoint", "c.pt"]).settings == AttackSettings()
    assert attack.parse_args(["--checkpoint", "c.pt", "--aa-iterations", "7"]).settings.autoattack_iterations == 7


def test_every_attack_of_the_suite_states_its_budget_and_passes():
    for name in TABLE_SUITE:
        assert ATTACKS[name].passes and ATTACKS[name].describe, name
    settings = AttackSettings()
    assert ATTACKS["pgd"].passes(settings, 10) == (5, 200)  # 5 starts x 40 steps of forward and backward
    assert ATTACKS["es"].passes(settings, 10) == (2 * 2 * (20 * 50 + 20 * 500 + 60 * 10000), 0)  # 1.2 M per run
    # APGD-T needs 4 classes: on the binarization test's 2-class networks AutoAttack runs APGD-CE, FAB-T, Square
    assert ATTACKS["autoattack"].passes(settings, 2) == (100 + 5000, 100 + 100)
    assert ATTACKS["bpda"].passes(settings, 10) == (6, 3 * (40 + 100 * 10))
    assert ATTACKS["bpda"].describe(settings) == "temperatures 0.3, 1, 3: 40 sign steps, then APGD 100 iterations each"


def test_the_estimate_scales_a_measured_pass_by_the_passes_and_the_images():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10)).eval()
    x, y = torch.rand(8, 3, 2, 2), torch.zeros(8, dtype=torch.long)
    one, many = (estimate(model, x, y, ["pgd", "es"], AttackSettings(), n) for n in (1, 1000))
    assert [row.attack for row in many] == ["pgd", "es"] and many[1].forwards == 2_444_000
    assert all(row.seconds > 0 for row in many)
    lines = estimate_lines(many, 1000)
    assert lines[0].startswith("budget and time at most") and "40 steps x 5 starts, ce loss" in lines[1]
    assert lines[-1].strip().startswith("all") and "at most" in lines[-1]
    assert model.training is False and one[0].forwards == many[0].forwards
