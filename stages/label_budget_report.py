"""DVC stage label-budget: the grid's points gathered into one table (metrics/label-budget.csv, drawn by dvc plots
against N), their figures (metrics/label-budget.json) and a chart (metrics/images/label-budget.png)."""

from simcaptcha.budget_report import draw_chart, summarize
from simcaptcha.config import load_config
from simcaptcha.errors import run_main
from simcaptcha.pipeline import IMAGES, LABEL_BUDGET, METRICS, stage_metrics
from simcaptcha.store import write_csv


def main() -> None:
    config = load_config().budget
    with stage_metrics("label-budget") as figures:
        table, summary = summarize(LABEL_BUDGET, config)
        write_csv(METRICS / "label-budget.csv", table)
        draw_chart(table, summary, IMAGES / "label-budget.png")
        figures.update(summary)
    print(table.to_string(index=False))


if __name__ == "__main__":
    run_main(main)
