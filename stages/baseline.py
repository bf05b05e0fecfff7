"""Stage `baseline`: TF-IDF + a linear model (scikit-learn, `baseline` in params.yaml) fitted on the train split of
data/corpus and scored on its test split; writes metrics/baseline.json and plots/baseline/predictions.csv
(lstm_vs_gru/baseline.py does the work). Never imports TensorFlow. Run from the project root:
`python -m stages.baseline`."""
from __future__ import annotations

from lstm_vs_gru import artifacts, params
from lstm_vs_gru.baseline import fit_and_score
from lstm_vs_gru.errors import exits_cleanly


@exits_cleanly
def main() -> None:
    settings = params.load().baseline
    train, test = (artifacts.read_corpus(split) for split in artifacts.SPLITS)
    result = fit_and_score(settings, train, test)
    artifacts.write_table(artifacts.BASELINE_PREDICTIONS, result.predictions)
    # metrics last, as the sign of a complete run
    artifacts.write_json(artifacts.BASELINE_METRICS, result.metrics)
    m = result.metrics
    print(f"baseline: {m['name']}: test_accuracy {m['test_accuracy']}, test_macro_f1 {m['test_macro_f1']}, "
          f"fit {m['fit_seconds']} s, {m['vocabulary_size']:,} terms -> {artifacts.BASELINE_METRICS}")


if __name__ == "__main__":
    main()
