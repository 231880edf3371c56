"""What each contender of an ablation design costs: parameters, MACs per image, and training throughput measured
for all of them in one interleaved run (one torch thread), as a ratio to the task's FSLA-off model.

Training times of the ablation's runs are taken as they ran, often beside other work; this is the figure to
compare contenders by. Run it on a quiet machine (``uptime``) and quote the load it ran under.

    python benchmarks/ablation_cost.py                       # the long-range design's far and cswin tasks
    python benchmarks/ablation_cost.py --design first --repeats 20
"""
import argparse
import os
import sys

import torch

from boat_vit.ablation import CONTENDERS, design_config
from boat_vit.ablation.cost import params_and_macs, training_throughput
from boat_vit.ablation.planning import contender_kwargs
from boat_vit.bench import environment, machine_line, markdown_table
from boat_vit.classification.tasks import parse_task

DEFAULT_REPEATS = 10


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--design", default="long-range", help="ablation design (default long-range)")
    parser.add_argument("--tasks", nargs="+", help="task keys (default: every task with contenders of its own)")
    parser.add_argument("--batch-size", type=int, help="images per step (default: the design's)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help=f"timed steps per model (default {DEFAULT_REPEATS})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = design_config(args.design)
    batch = args.batch_size or config.batch_size
    seen, rows = set(), []
    for task in config.tasks:
        if (args.tasks and task.key not in args.tasks) or (not args.tasks and set(task.contenders) <= seen):
            continue
        seen |= set(task.contenders)
        task_config = parse_task(task.spec)
        classes = len(task_config.classes)
        models = {name: (CONTENDERS[name].family, contender_kwargs(config, task_config, name)) for name in task.contenders}
        measured = training_throughput(models, classes, batch, args.repeats)
        for name, (family, kwargs) in models.items():
            params, macs = params_and_macs(family, kwargs, classes)
            rate, ratio = measured[name]
            rows.append(dict(task=task.key, contender=name, params=params / 1e6, macs=macs / 1e6, rate=rate, ratio=ratio))
    columns = [("task", "task", "{}"), ("contender", "contender", "{}"), ("params", "params (M)", "{:.3f}"),
               ("macs", "MMACs / image", "{:.1f}"), ("rate", "train img/s", "{:.0f}"),
               ("ratio", "throughput vs first of task", "{:.2f}")]
    print(markdown_table(rows, columns))
    info = environment("cpu")
    print(f"\n{machine_line(info)}, batch {batch}, {args.repeats} interleaved steps each, "
          f"load average {os.getloadavg()[0]:.2f} at the end, {info['date']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
