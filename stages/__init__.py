"""The DVC stages' entry points (`python -m stages.<name>`, run by dvc.yaml from the project root): each reads
its parameters, calls the library in `lstm_vs_gru`, and writes its outputs."""
