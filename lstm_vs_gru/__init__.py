"""lstm-vs-gru's library: parameters, artifacts and errors; the corpus, tokenizer and model; training,
gradient flow, the TF-IDF baseline and the report; the fused trainer (`fused`, optional) and the command line
(`cli`: predict, gate)."""
