"""Paper-agnostic measurements: tracing, head and neuron ablations, importance and CNA, comparisons,
head sweeps and attribution patching, evaluation, vocabulary projection, weight paths, statistics,
LoRA training and pruning."""
