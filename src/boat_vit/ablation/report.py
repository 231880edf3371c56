"""The report (placeholder while the analysis is written)."""
import csv
from pathlib import Path

RESULT_FIELDS = ("task", "contender", "family", "seed", "embed_dim", "params", "macs", "epochs", "final_top1",
                 "best_top1", "train_time_s", "images_per_s")


def write_report(rows, config, costs, pilot):
    output = Path(config.output)
    with open(output / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
