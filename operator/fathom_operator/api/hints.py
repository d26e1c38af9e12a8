"""What a recipe author (or the operator, from finished stages) tells the cost forecast.

`EstimateHints` is meant for a stage's `estimate:` field and `ModelInfo` for a recipe's `modelInfo:`
field (the forecast also takes them as plain dicts keyed by stage name). `MeasuredStage` is what the
operator reads back from a finished stage's metrics; measured values replace hints, hints replace the
forecast's priors, and every forecast row says which it used.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, TypeAdapter

from fathom_jobs.specs import Spec


class EstimateHints(Spec):
    problems: int | None = Field(
        None, ge=0, description="Problems (or rows) this stage outputs: the corpus size for prepare, the set size for curate.")
    keep_fraction: float | None = Field(
        None, ge=0, le=1, description="curate: the fraction of its input problems the selection keeps.")
    mean_tokens: float | None = Field(
        None, gt=0, description="Mean generated tokens per sample (sampling stages) or per chain (curated chains).")


class ModelInfo(Spec):
    """The base model's shape, for a model the forecast does not know (names as in a HF config.json)."""

    layers: int = Field(gt=0, description="num_hidden_layers")
    hidden_size: int = Field(gt=0)
    attention_heads: int = Field(gt=0, description="num_attention_heads")
    kv_heads: int | None = Field(None, gt=0, description="num_key_value_heads (default: attentionHeads)")
    vocab_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    head_dim: int | None = Field(None, gt=0, description="default: hiddenSize / attentionHeads")
    parameters: int | None = Field(None, gt=0, description="default: counted from the shape (Qwen2 layout)")
    tie_word_embeddings: bool = False
    max_position_embeddings: int | None = Field(None, gt=0)

    def config(self) -> dict[str, Any]:
        """The equivalent HF config.json keys."""
        doc: dict[str, Any] = {
            "num_hidden_layers": self.layers, "hidden_size": self.hidden_size,
            "num_attention_heads": self.attention_heads, "num_key_value_heads": self.kv_heads or self.attention_heads,
            "vocab_size": self.vocab_size, "intermediate_size": self.intermediate_size,
            "tie_word_embeddings": self.tie_word_embeddings,
        }
        if self.head_dim:
            doc["head_dim"] = self.head_dim
        if self.max_position_embeddings:
            doc["max_position_embeddings"] = self.max_position_embeddings
        return doc


class MeasuredStage(Spec):
    problems: int | None = Field(None, ge=0, description="Problems the stage processed or produced.")
    rows: int | None = Field(None, ge=0, description="Rows the stage wrote (curated chains or prompts).")
    mean_tokens: float | None = Field(None, ge=0, description="Mean generated tokens per sample, or per chain.")
    gpu_hours: float | None = Field(None, ge=0, alias="gpuHours", description="GPU-hours the stage used.")


HINTS = TypeAdapter(dict[str, EstimateHints])
MEASURED = TypeAdapter(dict[str, MeasuredStage])
