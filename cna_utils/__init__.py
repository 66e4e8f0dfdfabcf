"""cna_utils: the library behind the book "Comparative Neuron Analysis of arithmetic, reproduced".

It reproduces Yu & Ananiadou (EMNLP 2024), "Interpreting Arithmetic Mechanism in Large Language
Models through Comparative Neuron Analysis", on any supported causal LM.

Models (``models``)
    load_model(name="smollm2-135m", device=None, dtype=None) -> (model, tokenizer)
    spec(model) -> ModelSpec            shape facts and family (llama, gpt2, gptj, gpt_neox)
Families (``families``)
    family(model) -> Family             every architecture fact (module paths, norm, q/k/v layout, ...)
    register(Family(...), "model_type") support a new architecture with one entry
    layers / attention / o_proj / mlp / down_proj / ffn_values / ffn_keys / final_norm / unembed
Data (``data``)
    arithmetic_dataset(ops, digits, templates, words, n, seed, negative, tokenizer) -> [Case]
    align(cases, tokenizer)             token-aligned answers (the leading-space trap handled)
    digit_cases(cases)                  one teacher-forced case per answer digit (memorize / change-one)
Evaluation (``evaluate``)
    accuracy(model, tokenizer, cases) -> per-case DataFrame;  summarize(frame, by)
Tracing (``tracing``)
    trace(model, tokenizer, prompts, positions, layers, keep) -> Trace
    frozen_norm / frozen_logits         the final norm with statistics frozen at the real residual
Heads (``heads``)
    ablate_heads(model, heads, method="zero"|"mean", means)   context manager (o_proj input slices)
    head_means(model, tokenizer, cases);  zeroed_in_weights(model, heads)  (the authors' way)
Sweep (``sweep``)
    head_sweep(model, tokenizer, cases, heads=None, by, ...) -> DataFrame   batched, resumable
    head_sweep_cases(...) -> DataFrame   the same, one row per (head, case)
Attribution patching (``attribution``)
    attribution_patching(model, tokenizer, cases, heads=None, by, method="atp"|"atp*") -> DataFrame
        head_sweep's table estimated from one forward + backward per batch (plus GradDrop, dla)
Neurons (``importance``, ``neurons``)
    importance_scores(model, trace_or_traces, target_ids) -> [cases, layers, neurons]   exact, batched
    cna(scores_a, scores_b);  top_neurons(score, k, layers, **columns) -> DataFrame
    mask_neurons(model, neurons, mode="zero"|"keep", layers)   context manager (every position)
    run_masked / neuron_effects / coef_decrease
Vocabulary and circuits (``vocab``, ``circuits``)
    vocab_projection(model, tokenizer, vectors, k);  concept_mask(tokenizer)  (lexicon.yaml)
    ov_transform / ov_backproject       value-output maps per layer or head (GQA-expanded)
    ov_factors                          a layer's summed value-output map as A @ B of width n_kv x head_dim
    pe_dag_edges;  lowest_neuron;  hidden_interpretable   (Sections 4.3-4.4)
LoRA, pruning, bias (``lora``, ``prune``, ``bias``; imported as modules)
    lora.lora_splits / train_lora / lora_per_layer / lora_applied   one attention layer, resumable
    prune.prune_ffn(model, keep)        remove FFN neurons for real (== zeroing them, tested)
    bias.bias_scores / gender_cna / model_professions / perplexity   Section 6.2
Profiles, paper numbers, the artefact cache (``profiles``, ``paper``, ``cache``)
    get_profile(name=None);  paper_table(key)

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

from . import analysis, bias, claims, lora, measures, prune, stats  # noqa: E402
from .circuits import (attn_norm_linear, hidden_interpretable, lowest_neuron, ov_backproject, ov_factors, ov_transform,
                       pe_dag_edges, transfer_scores)
from .compare import Comparison, compare
from .families import Family, family, register
from .data import AlignmentError, Case, align, arithmetic_dataset, digit_cases, digit_kinds, number_word
from .evaluate import accuracy, relative_decrease, summarize, token_table
from .heads import ablate_heads, head_means, head_name, parse_heads, zeroed_in_weights
from .models import (BUILTIN_MODELS, ModelSpec, UnsupportedModelError, attention, down_proj, ffn_keys,
                     ffn_values, final_norm, layers, load_model, mlp, o_proj, ov_weights, pick_device,
                     pre_attn_norm, pre_ffn_norm, spec, unembed, weight_out_in)
from .neurons import (cna, coef_decrease, importance_scores, mask_neurons, neuron_effects, neuron_name,
                      parse_neurons, projection, run_masked, single_token, top_neurons)
from .paper import PAPER_MODEL, paper_table
from .profiles import PROFILES, get_profile
from .results import load_results, save_results
from .depth import spread_layers
from .sweep import head_sweep, head_sweep_cases
from .attribution import attribution_patching, attribution_patching_cases, merge_exact
from .tracing import Trace, attention_pattern, frozen_logits, frozen_norm, trace
from .vocab import concept_mask, count_concepts, load_lexicon, token_text, vocab_logits, vocab_projection

__version__ = "0.1.0"
