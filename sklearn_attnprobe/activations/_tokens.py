"""Token strings that line up, row for row, with extracted activations."""

from ._encoder import check_drop_first_token, check_texts, resolve_max_length, tokenize_texts

__all__ = ["token_strings"]


def token_strings(tokenizer, texts, *, max_length=None, drop_first_token=False,
                  add_special_tokens=True, decode=False, return_dropped=False):
    """The token strings of each text, one per row of its extracted activations.

    Tokenizes exactly as :func:`extract_activations` and
    :class:`TransformerActivations` do (same truncation, special tokens and
    first-token dropping), so ``len(token_strings(...)[i])`` equals the number
    of activation rows of text ``i`` and string ``t`` names row ``t``. Pass
    the same options as to the extraction. No model is needed.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
        The tokenizer used for the extraction.
    texts : sequence of str
        The texts, in the order of the activations.
    max_length : int or None, default=None
        Truncate each text to this many tokens (special tokens included); None
        truncates only at the tokenizer's ``model_max_length`` when it defines
        a finite one, as the extraction does.
    drop_first_token : bool or "special", default=False
        Drop each text's first token (``True``) or only a first token that is
        a special token (``"special"``), as the extraction option of that name.
    add_special_tokens : bool, default=True
        Passed to the tokenizer, as in the extraction.
    decode : bool, default=False
        False: the vocabulary's token strings
        (:meth:`~transformers.PreTrainedTokenizerBase.convert_ids_to_tokens`,
        e.g. ``"Ġthe"`` in byte-level BPE vocabularies). True: each token
        decoded on its own (``" the"``); a token holding part of a multi-byte
        character then decodes to a replacement character.
    return_dropped : bool, default=False
        Also return what ``drop_first_token`` dropped.

    Returns
    -------
    tokens : list of list of str
        Per text, its token strings.
    dropped : list of str or None
        Only with ``return_dropped=True``: per text, the dropped first token's
        string, or None where nothing was dropped. With
        ``drop_first_token=True`` and a tokenizer that adds no BOS token
        (SmolLM2's GGUF tokenizer, GPT-2's) this is a real word.

    See Also
    --------
    extract_activations : The activations these strings label.
    sklearn_attnprobe.inspection.max_activating_examples : Shows tokens with
        the highest attention of a probe, in context.

    Examples
    --------
    A tiny word-level tokenizer that wraps each text in ``[CLS] ... [SEP]``
    and a random two-layer BERT, built offline:

    >>> from tokenizers import Tokenizer, models, pre_tokenizers, processors
    >>> from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
    >>> from sklearn_attnprobe.activations import extract_activations, token_strings
    >>> words = "[PAD] [UNK] [CLS] [SEP] the cat sat on a mat".split()
    >>> core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
    ...                                   unk_token="[UNK]"))
    >>> core.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> core.post_processor = processors.TemplateProcessing(
    ...     single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]",
    ...                                     pad_token="[PAD]")
    >>> model = BertModel(BertConfig(vocab_size=len(words), hidden_size=16,
    ...                              num_hidden_layers=2, num_attention_heads=2,
    ...                              intermediate_size=32))
    >>> texts = ["the cat sat on the mat", "a dog"]
    >>> token_strings(tokenizer, texts)
    [['[CLS]', 'the', 'cat', 'sat', 'on', 'the', 'mat', '[SEP]'], ['[CLS]', 'a', '[UNK]', '[SEP]']]
    >>> token_strings(tokenizer, texts, max_length=4, drop_first_token=True)
    [['the', 'cat', '[SEP]'], ['a', '[UNK]', '[SEP]']]
    >>> acts = extract_activations(model, tokenizer, texts, max_length=4,
    ...                            drop_first_token=True)
    >>> acts.lengths
    array([3, 3])
    >>> token_strings(tokenizer, ["the cat"], drop_first_token="special",
    ...               add_special_tokens=False, return_dropped=True)
    ([['the', 'cat']], [None])
    """
    if not callable(tokenizer):
        raise TypeError("tokenizer must be a Hugging Face tokenizer (callable "
                        f"on a list of texts); got {type(tokenizer).__name__}")
    texts = check_texts(texts)
    ids, _, drops = tokenize_texts(
        tokenizer, texts, max_length=resolve_max_length(tokenizer, max_length),
        add_special_tokens=bool(add_special_tokens),
        drop=check_drop_first_token(drop_first_token))

    def strings(seq):
        if decode:
            return [str(tokenizer.decode([i])) for i in seq]
        return [str(t) for t in tokenizer.convert_ids_to_tokens(seq)]

    out = [strings(seq[d:]) for seq, d in zip(ids, drops)]
    if not return_dropped:
        return out
    return out, [strings(seq[:1])[0] if d else None for seq, d in zip(ids, drops)]
