"""Build a tiny random-weight multilingual Whisper in a folder, with no downloads, and convert it for faster-whisper.

The real classes (WhisperForConditionalGeneration, a byte-level tokenizer with Whisper's special tokens at their
real ids, WhisperFeatureExtractor with 80 mel bins), tiny sizes; CTranslate2's own converter makes the
faster-whisper folder from it, as it would from a downloaded checkpoint.
usage: python tiny_whisper.py OUT_DIR   (OUT_DIR/hf: transformers, OUT_DIR/ct2: faster-whisper)
"""
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

TEXT_TOKENS = 50257  # multilingual Whisper: ids 0..50256 are text, then <|endoftext|> and the special tokens
LANGUAGES = ["en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id",
             "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg",
             "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br",
             "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so",
             "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt",
             "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su", "yue"]
SPECIALS = (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES]
            + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
               "<|notimestamps|>"])
TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level vocabulary (every string encodes), filled with word-like tokens to Whisper's real layout."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    letters = "abcdefghijklmnopqrstuvwxyz"
    n = 0
    while len(vocab) < TEXT_TOKENS:  # unreachable by encoding (no merges) but decodable: " ab", " ac", ...
        word = "\u0120" + letters[n % 26] + letters[(n // 26) % 26] + str(n // 676 or "")
        vocab.setdefault(word, len(vocab))
        n += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", additional_special_tokens=SPECIALS[1:])


def build_whisper(out: Path, d_model: int, layers: int, heads: int, ffn: int,
                  generation: GenerationConfig | None = None) -> tuple[Path, Path]:
    """A Whisper of this shape with random weights (seed 0) and the byte-level tokenizer, saved for transformers in
    out/hf and converted by CTranslate2 (int8) into out/ct2, as a downloaded checkpoint would be."""
    hf, ct2 = out / "hf", out / "ct2"
    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    assert ids["<|startoftranscript|>"] == 50258 and ids["<|notimestamps|>"] == 50364, ids
    vocab_size = len(tok) + TIMESTAMPS  # 51866, as large-v3: CTranslate2 calls a model multilingual from its size
    cfg = WhisperConfig(vocab_size=vocab_size, num_mel_bins=80, d_model=d_model, encoder_layers=layers,
                        decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
                        encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, max_source_positions=1500, max_target_positions=448,
                        pad_token_id=50257, bos_token_id=50257, eos_token_id=50257,
                        decoder_start_token_id=50258, suppress_tokens=[], begin_suppress_tokens=[220, 50257])
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg).eval()
    if generation is not None:
        model.generation_config = generation
    model.save_pretrained(hf)
    tok.save_pretrained(hf)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(hf)
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(hf), copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(
        str(ct2), quantization="int8", force=True)
    return hf, ct2


def build_tiny(out_dir: str) -> tuple[Path, Path]:
    """The tests' Whisper: tiny sizes, and a generation config that lets transformers pick language and task."""
    ids = {t: i for i, t in enumerate(SPECIALS, TEXT_TOKENS)}
    gen = GenerationConfig(decoder_start_token_id=50258, eos_token_id=50257, pad_token_id=50257,
                           suppress_tokens=[], begin_suppress_tokens=[220, 50257], no_timestamps_token_id=50364,
                           lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in LANGUAGES},
                           task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
                           is_multilingual=True, max_length=448)
    return build_whisper(Path(out_dir), d_model=64, layers=2, heads=2, ffn=128, generation=gen)


if __name__ == "__main__":
    build_tiny(sys.argv[1])
