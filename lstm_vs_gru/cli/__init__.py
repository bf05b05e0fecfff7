"""The side doors: `lstm-vs-gru-predict` (new text to groups) and `lstm-vs-gru-gate` (metrics against a baseline,
as an exit status). They read the pipeline's outputs and write none of them."""
