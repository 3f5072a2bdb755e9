"""The cost columns of the paper's Tables 1-3, reproduced by the counter for every method."""

from __future__ import annotations

import pytest
import torch

from mimmo.cli import main
from mimmo.evaluation.cost import count_cost
from mimmo.evaluation.cost_table import cost_table, format_cost_table
from mimmo.methods.registry import METHODS, build_method, method_options
from mimmo.models import MLPFactory

# The paper's Tables 1-3 as printed: method -> {M: (FLOPs [M], params [M])}; strings keep the printed precision.
PAPER = {
    "base": {2: ("109.85", "1.76"), 4: ("109.85", "1.76"), 8: ("109.85", "1.76")},
    "ensemble": {2: ("219.7", "3.51"), 4: ("439.4", "7.02"), 8: ("878.8", "14.05")},
    "mc_dropout": {2: ("1104.6", "1.76"), 4: ("1104.6", "1.76"), 8: ("1104.6", "1.76")},
    "dun": {2: ("172.17", "1.99"), 4: ("172.17", "1.99"), 8: ("172.17", "1.99")},
    "early_exit": {2: ("110.46", "2.24"), 4: ("110.46", "2.24"), 8: ("110.46", "2.24")},
    "mimo": {2: ("110.35", "1.81"), 4: ("111.33", "1.91"), 8: ("113.31", "2.12")},
    "datamux": {2: ("110.53", "1.81"), 4: ("111.70", "1.91"), 8: ("114.05", "2.12")},
    "mixmo": {2: ("110.35", "1.81"), 4: ("111.33", "1.91"), 8: ("113.31", "2.12")},
    "mimmo": {2: ("172.82", "2.04"), 4: ("174.11", "2.15"), 8: ("176.70", "2.35")},
}
PAPER["mimmo_gamma"] = PAPER["mimmo"]  # one row in the paper


@pytest.fixture(scope="module")
def tables():
    """The cost table for M = 2, 4, 8 on the paper's backbone (one thread: small batch-1 passes)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {m: {row["method"]: row for row in cost_table(m)} for m in (2, 4, 8)}
    finally:
        torch.set_num_threads(previous)


def printed(value: int, decimals: int) -> str:
    return f"{value / 1e6:.{decimals}f}"


@pytest.mark.parametrize("num_members", [2, 4, 8])
@pytest.mark.parametrize("name", list(PAPER))
def test_cost_matches_the_paper(tables, name, num_members):
    row = tables[num_members][name]
    paper_flops, paper_params = PAPER[name][num_members]
    assert printed(row["flops"], len(paper_flops.split(".")[1])) == paper_flops
    if name == "ensemble" and num_members == 4:  # the paper rounds 7,025,360 down to 7.02
        assert abs(row["params"] / 1e6 - float(paper_params)) <= 0.01 + 1e-9
    else:
        assert printed(row["params"], 2) == paper_params


def test_exact_counts(tables):
    """Counts that follow from the architecture (docs/method.md), to the unit."""
    row = tables[2]
    base_flops, base_params = 109_852_872, 1_756_340
    assert (row["base"]["flops"], row["base"]["params"]) == (base_flops, base_params)
    for m in (2, 4, 8):
        assert tables[m]["ensemble"]["flops"] == m * base_flops
        assert tables[m]["ensemble"]["params"] == m * base_params
        # MixMo mixes the outputs of M separate stem convs: exactly MIMO's M*C-channel stem conv.
        assert (tables[m]["mixmo"]["flops"], tables[m]["mixmo"]["params"]) == (
            tables[m]["mimo"]["flops"], tables[m]["mimo"]["params"])
        # DataMUX = MIMO + M coders: conv3x3 3->3 (27 per output) + BN (2) + ReLU (1) on 3x32x32;
        # 81 + 6 parameters each.
        assert tables[m]["datamux"]["flops"] - tables[m]["mimo"]["flops"] == m * 30 * 3 * 32 * 32
        assert tables[m]["datamux"]["params"] - tables[m]["mimo"]["params"] == m * 87
    # MC Dropout: 10 passes, each the base pass plus one op per element entering a dropped layer: every
    # conv and linear but the stem conv. Stage 1: 16+32+32+16 (shortcut) maps of 32x32 = 98,304; stage 2:
    # 212,992 + 65,536; stage 3: 106,496 + 2 x 32,768; stage 4: 53,248; head 512. Sum 602,624.
    assert row["mc_dropout"]["params"] == base_params
    assert row["mc_dropout"]["flops"] == 10 * (base_flops + 602_624)
    assert row["early_exit"]["params"] == 2_242_126
    assert row["dun"]["params"] == 1_990_328  # 233,984 adapter parameters + 4 depth logits


def test_independent_rows_do_not_depend_on_m(tables):
    for name in ("base", "mc_dropout", "dun", "early_exit"):
        assert tables[2][name] == tables[4][name] == tables[8][name]


def test_rows_are_in_the_papers_order(tables):
    assert list(tables[4]) == list(METHODS)


def test_format_cost_table(tables):
    rows = list(tables[4].values())
    text = format_cost_table(rows, 4)
    assert "M = 4" in text.splitlines()[0]
    assert "| method | FLOPs [M] | params [M] |" in text
    assert "| MIMMO | 174.11 | 2.15 |" in text
    assert "| MC Dropout | 1104.55 | 1.76 |" in text
    assert text.count("\n| ") == len(METHODS) + 1


def test_every_method_is_counted_on_the_mlp():
    factory = MLPFactory(hidden=(12, 10, 8), stem_features=12)
    costs = {}
    for name in METHODS:
        options = {"num_members": 3} if "num_members" in method_options(name) else {}
        costs[name] = count_cost(build_method(name, factory, 7, 5, options), (7,))
        assert costs[name].flops > 0 and costs[name].params > 0
    assert costs["mixmo"] == costs["mimo"]
    assert costs["ensemble"].flops == 3 * costs["base"].flops


def test_cost_table_refuses_a_bad_ensemble_size():
    with pytest.raises(ValueError, match="num_members"):
        cost_table(0)


def test_cost_command_prints_the_papers_base_cost(capsys):
    main(["cost", "method=base", "data=cifar100"])
    out = capsys.readouterr().out
    assert "109.85 M FLOPs" in out and "1.76 M params" in out
    assert "109,852,872 FLOPs" in out and "1,756,340 params" in out


def test_cost_command_prints_the_papers_mimmo_cost(capsys):
    main(["cost", "method=mimmo", "method.num_members=2", "data=cifar100"])
    out = capsys.readouterr().out
    assert "172.82 M FLOPs" in out and "2.04 M params" in out
