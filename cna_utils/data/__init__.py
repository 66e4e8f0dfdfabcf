"""The inputs: the arithmetic dataset (``arithmetic``), the concept lexicon and the bias word lists."""
