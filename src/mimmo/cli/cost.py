"""``mimmo cost``: FLOPs and parameters of one test-time prediction, from a config (Hydra overrides), for every
method (``--table``) or of a trained run (``--run``)."""

from __future__ import annotations

import argparse

from mimmo.cli.errors import run_reporting_errors
from mimmo.config import check_overrides_parse, compose

COST_HELP = """\
usage: mimmo cost [--table] [--members 2,4,8] [KEY=VALUE ...]

FLOPs and parameters of one test-time prediction (batch 1, every member, sample and exit counted) in the
paper's convention, from the config's shapes alone: nothing is trained or read from disk.

options:
  KEY=VALUE                the same overrides as `mimmo train` (method=..., method.num_members=..., data=...,
                           model.width=...)
  --table                  the cost columns of the paper's Tables 1-3: every method, one table per M
  --members 2,4,8          the ensemble sizes of --table

examples:
  mimmo cost method=base data=cifar100           109.85 M FLOPs, 1.76 M params
  mimmo cost --table data=cifar100 --members 2,4
"""


def help_text() -> str:
    return COST_HELP


def cost_table_command(overrides: list[str]) -> None:
    """``mimmo cost --table [--members 2,4,8] [model/data overrides]``: every method, the paper's layout."""
    from mimmo.evaluation.cost_table import cost_table, format_cost_table
    from mimmo.models.backbone import backbone_input_shape
    from mimmo.models.registry import build_backbone_factory
    from mimmo.training.build import input_spec

    members = [2, 4, 8]
    if "--members" in overrides:
        position = overrides.index("--members")
        given = overrides[position + 1] if position + 1 < len(overrides) else None
        try:
            members = [int(m) for m in str(given).split(",")]
        except ValueError:
            members = []
        if given is None or not members or min(members) < 1:
            raise ValueError(f"--members takes a comma-separated list of integers >= 1, e.g. 2,4,8, got {given!r}")
        overrides = overrides[:position] + overrides[position + 2:]
    cfg = compose([o for o in overrides if o != "--table"])
    data_shape, num_classes = input_spec(cfg)
    factory = build_backbone_factory(cfg.model)
    input_shape = backbone_input_shape(factory, data_shape)
    print(f"{cfg.data.name} {data_shape}, {num_classes} classes, model {dict(cfg.model)}\n")
    for num_members in members:
        print(format_cost_table(cost_table(num_members, input_shape, num_classes, factory), num_members))


def run_cost_command(arguments: list[str]) -> None:
    """``mimmo cost --run RUN_DIR [--prune-exits EPS]``: the cost of a trained run, full and with exits pruned."""
    parser = argparse.ArgumentParser(prog="mimmo cost --run", description=run_cost_command.__doc__)
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a finished run folder")
    parser.add_argument("--prune-exits", type=float, default=None, metavar="EPS",
                        help="also the network with every exit whose weight is < EPS dropped")
    args = parser.parse_args(arguments)
    from mimmo.runs.posthoc import run_cost

    cost = run_cost(args.run, args.prune_exits)
    print(f"{args.run}: {cost['method']} (M={cost['num_members']}, D={cost['num_exits']}) on {cost['input_shape']}: "
          f"{cost['flops'] / 1e6:.2f} M FLOPs, {cost['params'] / 1e6:.4f} M params ({cost['flops']:,} FLOPs, "
          f"{cost['params']:,} params)")
    if "pruned" in cost:
        pruned = cost["pruned"]
        kept = ", ".join(str(i + 1) for i, used in enumerate(pruned["exits_used"]) if used)
        print(f"exits pruned at EPS={args.prune_exits:g}: exits {kept} of {cost['num_exits']} run (stages 1-"
              f"{pruned['deepest_stage']}): {pruned['cost']['flops'] / 1e6:.2f} M FLOPs "
              f"({pruned['cost']['flops'] / cost['flops']:.1%}), {pruned['cost']['params'] / 1e6:.4f} M params "
              f"({pruned['cost']['flops']:,} FLOPs, {pruned['cost']['params']:,} params); weights per exit and member "
              f"{[[round(w, 4) for w in row] for row in pruned['weights']]}")


def cost_command(overrides: list[str]) -> None:
    from mimmo.evaluation.cost import count_cost
    from mimmo.training.build import build_method_from_config, input_spec, model_input_shape

    if "--table" in overrides:
        cost_table_command(overrides)
        return
    if any(o == "--run" or o.startswith("--run=") for o in overrides):
        run_cost_command(overrides)
        return
    check_overrides_parse(overrides)
    cfg = compose(overrides)
    input_shape, num_classes = input_spec(cfg)
    method = build_method_from_config(cfg, input_shape, num_classes)
    cost = count_cost(method, model_input_shape(cfg, input_shape))
    print(f"{cfg.method.name} (M={method.num_members}, D={method.num_exits}) on {cfg.data.name} {input_shape}: "
          f"{cost.flops / 1e6:.2f} M FLOPs, {cost.params / 1e6:.2f} M params "
          f"({cost.flops:,} FLOPs, {cost.params:,} params; one test-time prediction, paper convention)")


def main(arguments: list[str]) -> None:
    run_reporting_errors("cost", lambda: cost_command(arguments))
