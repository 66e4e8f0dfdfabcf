"""cna_utils: the library behind the book "Comparative Neuron Analysis of arithmetic, reproduced".

It reproduces Yu & Ananiadou (EMNLP 2024), "Interpreting Arithmetic Mechanism in Large Language
Models through Comparative Neuron Analysis", on any supported causal LM. Each folder is one kind of
room, and every public name has one import path (``from cna_utils.measure.importance import cna``):

``model/``    the model and its architecture: ``families`` (one map of every architecture fact, and
              each family's norm maths), ``loading`` (``load_model``), ``weights`` and ``install``
              (hash-pinned weights), ``hooks``, ``forward`` (encoding and answer scores)
``data/``     the inputs: ``arithmetic`` (the paper's dataset, token-aligned), the concept lexicon and
              the gender-bias word lists (``lexicon.yaml``, ``bias.yaml``)
``measure/``  paper-agnostic primitives: ``names`` (heads and neurons, parsed once), ``tracing``,
              ``interventions`` (head ablations and neuron masks, one vocabulary), ``importance`` (the
              importance score, CNA, top neurons), ``compare`` (the one ``Comparison``), ``neurons``
              (effects of neuron masks), ``sweep`` and ``attribution`` (every head's effect, exact or
              estimated), ``evaluate``, ``vocab``, ``circuits`` (weight paths), ``stats``
              (intervals), ``lora`` and ``prune``
``paper/``    one module per section of the paper, each table as a function: ``heads`` (Section 3),
              ``study`` (the head, cases and CNA chapters 2-4 share), ``neurons`` (Tables 4-6, 15-16),
              ``hidden`` (Tables 7-8, 17), ``lora`` (Section 5), ``bias`` (Section 6.2), ``depth``
              (the paper's layer ranges scaled to this model); ``numbers`` (the paper's own numbers),
              ``claims`` (its claims and their verdict rules), ``measures`` (what the claims read)
``store/``    what runs keep: ``cache`` (artefacts keyed on the weights), ``results`` (each chapter's
              results file), ``schema`` (what each results file must hold), ``profiles`` (the smoke /
              book / paper sizes)
``publish/``  the book around it: chapters, figures, scoreboard, findings, student version

Sign conventions: accuracies are fractions in [0, 1]; a "drop" is base minus ablated (bigger =
more important); log-probabilities are natural logs.
"""
import warnings

# tqdm.auto warns in every notebook without ipywidgets; its plain-text bars are what we want there
warnings.filterwarnings("ignore", message="IProgress not found")
# peft asks transformers a deprecated question on every wrap, and looks for a config.json beside the
# GGUF file when saving an adapter; neither concerns the reader
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
warnings.filterwarnings("ignore", message="Could not find a config file")

__version__ = "0.1.0"
