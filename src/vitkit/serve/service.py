"""What the routes do, without HTTP: uploads decoded and preprocessed off the event loop, class probabilities
from the batching model thread, top-k, attention maps, patch features and the model's description.

Every image goes through :class:`vitkit.predictor.Predictor`'s :class:`~vitkit.data.Preprocess`, the path
``vitkit predict`` takes, so the service gives the same probabilities for the same file.
"""

from __future__ import annotations

import asyncio
import base64
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from .. import __version__
from ..model import count_parameters
from ..predictor import Predictor
from ..attention_maps import read_attention
from ..data.images import open_image
from .batching import ModelWorker
from .inputs import MAX_IMAGES, RequestError, Upload
from .render import image_png, overlay_png, patch_colours_png


@dataclass(frozen=True)
class Settings:
    """The service's knobs (``vitkit serve``'s options)."""

    max_batch: int = 32  # images in one forward pass at most
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    batching: bool = True  # False: each request runs alone
    max_upload_mb: float = 10.0  # the largest request body taken, in MiB
    top_k: int = 5  # classes returned when a request does not say (at most the model's classes)
    name: str = "vitkit"  # the model's name in the Open Inference Protocol routes


class Service:
    """One served model. :meth:`start` before use (the app's lifespan does), :meth:`stop` after."""

    def __init__(self, predictor: Predictor, settings: Settings = Settings()):
        self.predictor, self.settings = predictor, settings
        model = predictor.model
        self.depth, self.heads = len(model.blocks), model.config.num_heads
        self.grid = model.patch_embed.grid_for(*predictor.preprocess.img_size)
        self.query = "[CLS]" if getattr(model, "cls_token", None) is not None else "mean-token"
        self.top_k_default = min(settings.top_k, len(predictor.classes))
        self.worker = ModelWorker(predictor.probabilities, settings.max_batch, settings.max_wait_ms / 1000,
                                  settings.batching)
        # Decoding and resizing run here, a few at a time: more threads would only fight over 2 cores with
        # the model's own threads.
        self.pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="vitkit-decode")

    async def start(self) -> None:
        """Start the model thread and run one image through it, so the first request pays no warm-up."""
        self.worker.start()
        await self.worker.run(torch.zeros(1, self.predictor.preprocess.channels, *self.predictor.preprocess.img_size))

    def stop(self) -> None:
        self.worker.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def off_loop(self, fn, *args):
        """``fn(*args)`` on the decoding threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _load(self, upload: Upload) -> tuple[torch.Tensor, torch.Tensor]:
        """The image as the model sees it, uint8 (C, H, W), and the model's input made of it, float32."""
        image = self.predictor.preprocess.load(open_image(upload.data, upload.name))
        return image, self.predictor.preprocess.normalize(image)

    def _input(self, upload: Upload) -> torch.Tensor:
        return self.predictor.preprocess(open_image(upload.data, upload.name))  # float32 (C, H, W)

    async def inputs(self, uploads: list[Upload]) -> torch.Tensor:
        """The model's input batch (n, C, H, W) of encoded images, decoded in parallel off the event loop."""
        images = await asyncio.gather(*(self.off_loop(self._input, u) for u in uploads))
        return await self.off_loop(torch.stack, images)

    async def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (n, classes) of an input batch, batched with concurrent requests."""
        return await self.worker.run(x)

    def check_top_k(self, k: int | None) -> int:
        n = len(self.predictor.classes)
        if k is None:
            return self.top_k_default
        if not 1 <= k <= n:
            raise RequestError(422, f"top_k must lie between 1 and {n} (the model's classes), got {k}")
        return k

    def ranked(self, probs: torch.Tensor, k: int) -> list[list[dict[str, Any]]]:
        """Top-k of each row as ``[{"class", "probability"}]``, probabilities rounded as ``vitkit predict``'s."""
        return [[{"class": c, "probability": round(p, 6)} for c, p in row] for row in self.predictor.top_k(probs, k)]

    async def classify(self, uploads: list[Upload], k: int | None = None) -> list[dict[str, Any]]:
        """``[{"image": name, "top_k": [...]}]``, the shape of ``vitkit predict --json``."""
        k = self.check_top_k(k)
        probs = await self.probabilities(await self.inputs(uploads))
        return [{"image": u.name, "top_k": r} for u, r in zip(uploads, self.ranked(probs, k))]

    def check_layer_head(self, layer: int, head: int | None) -> tuple[int, int | None]:
        """``layer`` and ``head`` as non-negative indices (negative ones count from the end)."""
        if not -self.depth <= layer < self.depth:
            raise RequestError(422, f"layer {layer} does not exist; the model has layers 0..{self.depth - 1}")
        if head is not None and not -self.heads <= head < self.heads:
            raise RequestError(422, f"head {head} does not exist; the model has heads 0..{self.heads - 1} "
                                    "(leave it out for the mean of the heads)")
        return layer % self.depth, None if head is None else head % self.heads

    async def attention(self, upload: Upload, layer: int = -1, head: int | None = None,
                        fmt: str = "png") -> dict[str, Any]:
        """The image's attention rollout over all layers and the [CLS] (or mean-token) attention of one
        layer and head (None: the mean of the heads), as base64 PNG overlays or as (gh, gw) arrays."""
        if fmt not in ("png", "array"):
            raise RequestError(422, f"format must be 'png' or 'array', got {fmt!r}")
        layer, head = self.check_layer_head(layer, head)
        image, x = await self.off_loop(self._load, upload)  # uint8 and float32 (C, H, W)
        model, device = self.predictor.model, self.predictor.device

        def maps():  # one pass on the model's thread: every layer's [CLS] attention and the rollout
            seen = read_attention(model, x[None].to(device))
            return seen.layers[layer][0].cpu(), seen.rollout[0].cpu()

        heads, rollout = await self.worker.call(maps)  # (heads, gh, gw), (gh, gw)
        attn = heads.mean(0) if head is None else heads[head]
        out = {"image": upload.name, "layer": layer, "head": head, "query": self.query, "grid": list(self.grid),
               "format": fmt}
        if fmt == "array":
            return {**out, "rollout": rollout.tolist(), "attention": attn.tolist()}
        pngs = await self.off_loop(lambda: [image_png(image), overlay_png(image, rollout), overlay_png(image, attn)])
        return {**out, **{key: base64.b64encode(png).decode()
                          for key, png in zip(("input", "rollout", "attention"), pngs)}}

    async def features(self, upload: Upload, fmt: str = "png") -> dict[str, Any]:
        """The image's final patch features: their first three principal components as colours (a base64 PNG
        as large as the input's), or with ``fmt="array"`` the colours (gh, gw, 3) and the features (D, gh, gw)."""
        from ..visualize import dense_features, feature_pca

        if fmt not in ("png", "array"):
            raise RequestError(422, f"format must be 'png' or 'array', got {fmt!r}")
        image, x = await self.off_loop(self._load, upload)  # uint8 and float32 (C, H, W)
        model, device = self.predictor.model, self.predictor.device
        dense = (await self.worker.call(lambda: dense_features(model, x[None].to(device))))[0]  # (D, gh, gw)
        rgb = feature_pca(dense)  # (gh, gw, 3)
        out = {"image": upload.name, "grid": list(self.grid), "format": fmt}
        if fmt == "array":
            return {**out, "pca": rgb.round(6).tolist(), "features": dense.tolist()}
        png = await self.off_loop(patch_colours_png, rgb, tuple(image.shape[-2:]))
        return {**out, "features": base64.b64encode(png).decode()}

    def info(self) -> dict[str, Any]:
        p, cfg = self.predictor, self.predictor.model.config
        return {"name": self.settings.name, "vitkit_version": __version__, "checkpoint": p.path.name,
                "architecture": cfg.to_dict(), "parameters": count_parameters(p.model),
                "classes": p.classes, "image_size": list(p.preprocess.img_size), "channels": p.preprocess.channels,
                "preprocessing": {**p.preprocess.to_dict(), "description": p.preprocess.describe()},
                "layers": self.depth, "heads": self.heads, "grid": list(self.grid), "attention_query": self.query,
                "device": str(p.device), "top_k": self.top_k_default,
                "batching": {"enabled": self.settings.batching, "max_batch": self.settings.max_batch,
                             "max_wait_ms": self.settings.max_wait_ms},
                "max_upload_mb": self.settings.max_upload_mb, "max_images_per_request": MAX_IMAGES}
