"""Shared settings of the model pipeline: paths, model configs, special tokens, chat template."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent
# Where the model directories are written; TIERGATE_MODELS_OUT=/tmp/x makes a run that leaves models/ alone.
OUT_DIR = Path(os.environ.get("TIERGATE_MODELS_OUT", MODELS_DIR))
WORK_DIR = OUT_DIR / ".work"  # git-ignored intermediates (corpora, trained weights)

# Order fixes the ids: <|pad|>=0, <|end|>=1, <|system|>=2, <|user|>=3, <|assistant|>=4.
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
PAD, EOS = "<|pad|>", "<|end|>"
MESSAGE_TEMPLATE = "<|{role}|>{content}<|end|>"
GENERATION_PROMPT = "<|assistant|>"
# The same template in Jinja, as the manifest carries it (the engine renders it with minijinja).
CHAT_TEMPLATE_JINJA = ("{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
                       "{% if add_generation_prompt %}<|assistant|>{% endif %}")

OPSET = 17
ORT_VERSION = "1.31.1"


def render_prompt(prompt: str) -> str:
    """A single prompt rendered as one user message plus the generation prompt (the brief's template)."""
    return MESSAGE_TEMPLATE.format(role="user", content=prompt) + GENERATION_PROMPT


def render_example(prompt: str, answer: str) -> str:
    """A training example: the rendered prompt followed by the answer and EOS."""
    return render_prompt(prompt) + answer + EOS


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str  # directory under models/
    manifest_name: str
    architecture: str  # "gpt2" or "llama"
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    context_length: int
    norm_eps: float
    rope_theta: float
    # training
    seed: int
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float

    @property
    def out_dir(self) -> Path:
        return OUT_DIR / self.name

    @property
    def work_dir(self) -> Path:
        return WORK_DIR / self.name


# Steps can be overridden for a quick smoke run: TIERGATE_TRAIN_STEPS=50 models/make-models.sh
_STEPS_OVERRIDE = os.environ.get("TIERGATE_TRAIN_STEPS")

EDGE = ModelConfig(
    name="edge",
    manifest_name="tiergate-edge",
    architecture="gpt2",
    vocab_size=1024,
    d_model=128,
    num_layers=5,
    num_heads=4,
    num_kv_heads=4,
    head_dim=32,
    d_ff=512,
    context_length=256,
    norm_eps=1e-5,
    rope_theta=0.0,
    seed=1234,
    steps=int(_STEPS_OVERRIDE or 2400),
    batch_size=64,
    learning_rate=3e-3,
    warmup_steps=100,
    weight_decay=0.01,
)

REGIONAL = ModelConfig(
    name="regional",
    manifest_name="tiergate-regional",
    architecture="llama",
    vocab_size=1536,
    d_model=256,
    num_layers=4,
    num_heads=8,
    num_kv_heads=2,
    head_dim=32,
    d_ff=640,
    context_length=256,
    norm_eps=1e-5,
    rope_theta=10000.0,
    seed=4321,
    steps=int(_STEPS_OVERRIDE or 3000),
    batch_size=48,
    learning_rate=2e-3,
    warmup_steps=100,
    weight_decay=0.01,
)

CONFIGS = {c.name: c for c in (EDGE, REGIONAL)}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path):
    return json.loads(path.read_text())
