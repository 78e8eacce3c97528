"""Build a tiny random-weight Qwen3-VL (model + processor) in a folder, with no downloads (from shared/recipes).

The real classes (Qwen3VLForConditionalGeneration, Qwen3VLProcessor, a byte-level Qwen2Tokenizer with the
Qwen special tokens, a Qwen3-VL-style chat template), tiny sizes. Works with transformers 5.x generate() and
with vLLM's CPU server (text head_dim 32: vLLM's CPU attention has no kernel for 16).
usage: python tiny_qwen3vl.py OUT_DIR
"""
import sys

import torch
from tokenizers import pre_tokenizers
from transformers import (
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (  # Qwen3-VL-Instruct style, without tools; no default system prompt
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def build_processor(longest_edge: int = 16 * 32 * 32) -> tuple[Qwen3VLProcessor, dict[str, int]]:
    """The processor (byte-level tokenizer, real image/video processors) and the special token ids."""
    # Byte-level vocabulary, no merges: every string tokenizes; the Qwen special tokens on top.
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for t in SPECIALS:
        vocab[t] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", extra_special_tokens=SPECIALS[1:])
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    # The real patch / merge / temporal sizes; small pixel budgets (class defaults are old Qwen2-VL values: set them).
    img = Qwen2VLImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3,
                                image_std=[0.5] * 3, size={"shortest_edge": 4 * 32 * 32, "longest_edge": longest_edge})
    vid = Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3,
                                image_std=[0.5] * 3, size={"shortest_edge": 4 * 32 * 32, "longest_edge": 64 * 32 * 32 * 2})
    return Qwen3VLProcessor(image_processor=img, tokenizer=tok, video_processor=vid, chat_template=CHAT_TEMPLATE), ids


def build_tiny(out_dir: str) -> None:
    proc, ids = build_processor()
    tok = proc.tokenizer
    # Constraints: vision out_hidden_size == text hidden_size; num_position_embeddings a perfect square;
    # deepstack indexes < vision depth and no more of them than text layers; sum(mrope_section) == head_dim / 2.
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                          "mrope_section": [8, 4, 4], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                           num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)


if __name__ == "__main__":
    build_tiny(sys.argv[1])
