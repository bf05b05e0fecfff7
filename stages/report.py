"""Stage `report`: metrics/report.json (the cell params.yaml's `cell` puts forward: its means over seeds, and
both cells' aggregates with the verdict between them, the ensembles of their runs, and the TF-IDF baseline's
scores beside them), reports/report.md and the PNGs it links (lstm_vs_gru/report.py builds them)."""
from __future__ import annotations

from lstm_vs_gru import artifacts, params
from lstm_vs_gru.errors import exits_cleanly
from lstm_vs_gru.params import ModelParams
from lstm_vs_gru.report import (CONFUSION_MATRIX, LEARNING_CURVES, PER_GROUP_F1, SECONDS_PER_EPOCH, SEEDS_FIGURE,
                                aggregates, confusion, copy_gradient_figures, ensembles, group_labels, headline,
                                mean_seconds, per_group_scores, plot_confusion, plot_learning_curves,
                                plot_per_group_f1, plot_seconds_per_epoch, plot_seeds, read_baseline,
                                read_corpus_info, read_ensemble_inputs, read_gradients, read_inputs, render_markdown,
                                report_sections, top_confusions)


def write_report(selected: str, seeds: tuple[int, ...], model_params: ModelParams | None = None) -> None:
    """Read the train, baseline and gradients stages' outputs; write metrics/report.json, reports/report.md and
    its PNGs."""
    runs, predictions = read_inputs(selected, seeds)
    gradients = read_gradients()
    corpus = read_corpus_info()
    baseline = read_baseline()
    actual, predicted = predictions["actual"].tolist(), predictions["predicted"].tolist()
    labels = group_labels(actual, predicted)
    matrix = confusion(actual, predicted, labels)
    scores = per_group_scores(actual, predicted, labels)
    summary = aggregates(runs)
    head = headline(selected, runs, summary, baseline, ensembles(read_ensemble_inputs(seeds)))
    histories = {cell: [run.history for run in by_seed.values()] for cell, by_seed in runs.items()}
    artifacts.write_json(artifacts.REPORT_METRICS, head)
    artifacts.write_png(plot_learning_curves(histories, corpus.is_lab), LEARNING_CURVES)
    seconds = {cell: mean_seconds(runs, cell) for cell in runs}
    artifacts.write_png(plot_seconds_per_epoch(seconds, histories, corpus.is_lab), SECONDS_PER_EPOCH)
    artifacts.write_png(plot_seeds(runs, summary), SEEDS_FIGURE)
    artifacts.write_png(plot_confusion(matrix, labels, selected), CONFUSION_MATRIX)
    artifacts.write_png(plot_per_group_f1(scores, selected), PER_GROUP_F1)
    copy_gradient_figures()
    sections = report_sections(selected, runs, summary, head, scores, top_confusions(matrix, labels), gradients,
                               corpus, baseline, model_params)
    artifacts.write_text(artifacts.REPORT_MD, render_markdown(sections))


@exits_cleanly
def main() -> None:
    settings = params.load()
    write_report(settings.cell, settings.train.seeds, settings.model)


if __name__ == "__main__":
    main()
