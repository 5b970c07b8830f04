"""The Audio Spectrogram Transformer lobe (``transformers.ASTModel``)."""

import torch
import transformers

from petl_modules.backbones.base import Backbone, register
from petl_modules.backbones.loading import loading_options, read_config
from petl_modules.options import Option
from petl_modules.backbones.features import ASTFbank
from petl_modules.contract import checkpoint_contexts, token_mask


@register("audio-spectrogram-transformer", "ast")
class ASTBackbone(Backbone):
    """The Audio Spectrogram Transformer (``transformers.ASTModel``) as a lobe.

    Input: Kaldi fbank features ``[B, max_frames, mel]`` (``input_processor``). Output: the final
    LayerNorm's output ``[B, 2 + patches, D]`` (CLS, distillation token, patches), exactly what
    ``ASTModel`` returns as ``last_hidden_state``.

    Arguments
    ---------
    source : str
        Hub id (default checkpoint ``MIT/ast-finetuned-audioset-10-10-0.4593``) or local folder.
    max_frames : int
        Frames of input (10 ms each). The checkpoint's position embeddings are adapted to it.
    position_embeddings : str
        ``adapt`` (default): keep the pretrained embeddings, cut along time around the centre when
        fewer frames are used, interpolated along time when more (as the original AST code does).
        ``zeros``: reproduce the reference code, whose ``ignore_mismatched_sizes=True`` replaced
        them with zeros (frozen) whenever ``max_frames`` differs from the checkpoint's.
    attn_implementation : str
        ``sdpa`` (default, PyTorch scaled-dot-product attention) or ``eager``.
    gradient_checkpointing : bool
        Recompute each layer in backward to save memory.
    **other_options
        Options of the other families' lobes (e.g. ``clip_seconds``): ignored.
    """

    INSERTION_POINTS = {
        "embeddings": ["model.embeddings"],
        "layer": ["model.layers.[0-9]", "model.layers.[0-9][0-9]"],
        "later_layers": ["model.layers.[1-9]", "model.layers.[0-9][0-9]"],
        "attention": ["model.layers.*.attention"],
        "ffn": ["model.layers.*.mlp"],
        "ffn_in": ["model.layers.*.mlp.fc1"],
        "ffn_out": ["model.layers.*.mlp.fc2"],
        "ln_attention": ["model.layers.*.layernorm_before"],
        "ln_ffn": ["model.layers.*.layernorm_after"],
        "q": ["model.layers.*.attention.q_proj"],
        "k": ["model.layers.*.attention.k_proj"],
        "v": ["model.layers.*.attention.v_proj"],
        "o": ["model.layers.*.attention.o_proj"],
        "final_norm": ["model.layernorm"],
    }
    family = "ast"
    input_kind = "spectrogram"
    distillation_token = True
    MODEL_OPTIONS = {
        "max_frames": Option(int, 1024, "input frames (10 ms each); the position embeddings are "
                             "fitted to them", minimum=1),
        "position_embeddings": Option(str, "adapt", "adapt (cut or interpolate the pretrained ones) "
                                      "| zeros (the reference)", choices=("adapt", "zeros")),
    }
    PROMPT_POSITION = (1, 1)  # after the CLS token, in place of the distillation token

    def __init__(
        self,
        source,
        max_frames=1024,
        position_embeddings="adapt",
        attn_implementation="sdpa",
        gradient_checkpointing=False,
        **other_options,
    ):
        super().__init__(other_options)
        if position_embeddings not in ("adapt", "zeros"):
            raise ValueError(
                f"position_embeddings must be 'adapt' or 'zeros', got '{position_embeddings}'."
            )
        self.source = str(source)
        try:
            self.model, info = transformers.ASTModel.from_pretrained(
                source, output_loading_info=True, **loading_options(source, attn_implementation)
            )
        except OSError as err:
            read_config(source)  # raises the clear message when the checkpoint is unreachable
            raise err
        self.remember_checkpoint(self.model.state_dict(), info.get("missing_keys", ()))
        self.config = self.model.config
        self.max_frames = int(max_frames)
        self.position_embeddings = position_embeddings
        self._resize_position_embeddings(int(max_frames), position_embeddings)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if self.gradient_checkpointing:
            # context_fn: the recomputation in backward sees the forward's token mask, and PETL
            # BatchNorms do not update their running statistics a second time.
            self.model.activation_checkpointing_enable(
                {"use_reentrant": False, "context_fn": checkpoint_contexts}
            )
        self.input_processor = ASTFbank(max_frames=max_frames, num_mel_bins=self.config.num_mel_bins)

    def train(self, mode=True):
        """As ``Backbone.train``; with gradient checkpointing, every transformer layer object is
        flagged with ``mode`` so that frozen layers are recomputed in backward too.

        transformers checkpoints a layer only when the layer itself is in train mode, and a frozen
        layer stays in eval mode (``Backbone.train``): PETL methods would silently get no
        recomputation. Only the layer object's own flag is set; its dropouts stay in eval mode.
        """
        super().train(mode)
        if self.gradient_checkpointing:
            for _, layer in self.modules_at("layer"):
                getattr(layer, "pretrained_module", layer).training = mode
        return self

    @property
    def has_cls_token(self):
        return True

    def _patch_grid(self, max_frames):
        config = self.config
        freq = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
        time = (max_frames - config.patch_size) // config.time_stride + 1
        return freq, time

    def _resize_position_embeddings(self, max_frames, mode):
        """Fits the position embeddings to ``max_frames`` (see the class docstring)."""
        if max_frames < self.config.patch_size:
            raise ValueError(
                f"max_frames={max_frames} is shorter than one AST patch ({self.config.patch_size} "
                "frames); use at least that many."
            )
        old_freq, old_time = self._patch_grid(self.config.max_length)
        freq, time = self._patch_grid(max_frames)
        embeddings = self.model.embeddings
        if time == old_time:
            self.config.max_length = max_frames
            return
        old = embeddings.position_embeddings.data
        dim = old.shape[-1]
        if mode == "zeros":
            new = torch.zeros(1, 2 + freq * time, dim, dtype=old.dtype)
        else:
            grid = old[:, 2:].reshape(1, old_freq, old_time, dim).permute(0, 3, 1, 2)
            if time < old_time:
                start = old_time // 2 - time // 2
                grid = grid[..., start : start + time]
            else:
                grid = torch.nn.functional.interpolate(
                    grid, size=(old_freq, time), mode="bilinear", align_corners=False
                )
            patches = grid.permute(0, 2, 3, 1).reshape(1, freq * time, dim)
            new = torch.cat([old[:, :2], patches], dim=1)
        embeddings.position_embeddings = torch.nn.Parameter(
            new.contiguous(), requires_grad=embeddings.position_embeddings.requires_grad
        )
        self.config.max_length = max_frames

    def feature_extractor(self):
        """transformers' ``ASTFeatureExtractor`` with the run's settings (``max_frames``, mel
        bins, normalisation statistics): the same fbank, padding and scaling as ``ASTFbank``."""
        fbank = self.input_processor
        return transformers.ASTFeatureExtractor(
            sampling_rate=fbank.sample_rate, num_mel_bins=fbank.num_mel_bins,
            max_length=fbank.max_frames, padding_value=0.0, do_normalize=True, mean=fbank.mean,
            std=fbank.std, return_attention_mask=False)

    def classification_model(self, classifier):
        """``ASTForAudioClassification`` for a head of pooling ``cls_distill`` (its pooling: the
        mean of the CLS and distillation tokens, its own LayerNorm, the linear layer); for the
        other poolings, why not (see ``Backbone.classification_model``)."""
        if classifier.pooling != "cls_distill":
            return None, (
                f"pooling '{classifier.pooling}': ASTForAudioClassification always pools the mean "
                "of the CLS and distillation tokens through a LayerNorm of its own, which this "
                "head does not; train with --pooling=cls_distill for an export that pipeline runs "
                "as classify does")
        if classifier.norm.eps != self.config.layer_norm_eps:
            return None, (f"the checkpoint's layer_norm_eps {self.config.layer_norm_eps:g} is not "
                          f"the head's LayerNorm epsilon {classifier.norm.eps:g}")
        model = self._task_model(transformers.ASTForAudioClassification, classifier)
        with torch.no_grad():
            model.classifier.layernorm.load_state_dict(classifier.norm.state_dict())
            model.classifier.dense.load_state_dict(classifier.head.state_dict())
        return model, None

    def forward(self, inputs, lengths=None):
        """``inputs [B, max_frames, mel]`` -> ``(hidden [B, T, D], None)``; every token is valid
        (padding frames are zeros of the normalised fbank, as in AST training)."""
        with token_mask(None):  # every token valid for the PETL modules too
            return self.model(input_values=inputs).last_hidden_state, None
