"""
coreformer's C++ core (see coreformer.ops for the documented API)
"""
from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing
__all__: list[str] = ['PackedWeight', 'Tensor', 'adamw_step', 'additive_attention', 'additive_attention_backward', 'argmax', 'cross_entropy', 'dropout', 'embedding', 'embedding_backward', 'empty_cache', 'from_dlpack', 'gelu', 'gelu_backward', 'get_num_threads', 'info', 'layer_norm', 'layer_norm_backward', 'linear', 'linear_backward', 'multi_head_attention', 'pack_weight', 'philox_words', 'relu', 'relu_backward', 'scale_all', 'scaled_dot_product_attention', 'scaled_dot_product_attention_backward', 'scaled_dot_product_attention_forward', 'set_num_threads', 'sgd_step', 'sinusoidal_positions', 'softmax', 'softmax_backward', 'synchronize', 'tensor', 'total_norm', 'transformer_decoder_layer', 'transformer_encoder_layer']
class Tensor:
    """
    Memory on a device (shape, dtype, device) that stays there across op calls.
    
    Made by ``coreformer.tensor(data, device=..., dtype=...)``, ``coreformer.from_dlpack(x)`` or
    returned by an op called with tensors. ``.numpy()`` copies to a numpy array, ``.to(device,
    dtype)`` copies across devices or dtypes, and ``__dlpack__`` shares the memory with PyTorch,
    CuPy, JAX or numpy without a copy.
    """
    @staticmethod
    def __new__(*args, **kwargs):
        """
        (*args, **kwargs) -> object
        """
    def __array__(self, dtype: typing.Any = None, copy: typing.Any = None) -> typing.Any:
        ...
    def __dlpack__(self, *, stream: typing.Any = None, max_version: typing.Any = None, dl_device: typing.Any = None, copy: typing.Any = None) -> typing.Any:
        ...
    def __dlpack_device__(self) -> tuple[int, int]:
        ...
    def __getitem__(self, key: typing.Any) -> Tensor:
        """
        ``t[i]`` or ``t[a:b]`` along the first dimension: a view of the same memory.
        """
    def __len__(self) -> int:
        ...
    def __reduce__(self) -> tuple:
        ...
    def __repr__(self) -> str:
        ...
    def numpy(self) -> numpy.ndarray:
        """
        A copy as a numpy array in host memory (bfloat16 arrives as float32).
        """
    def reshape(self, *args) -> Tensor:
        """
        A view of the same memory with another shape (one dimension may be -1).
        """
    def to(self, device: typing.Any = None, dtype: typing.Any = None) -> Tensor:
        """
        This tensor on `device` ('cpu', 'cuda', 'cuda:N') as `dtype`: itself when both already match, else a copy.
        """
    @property
    def device(self) -> str:
        ...
    @property
    def dtype(self) -> str:
        ...
    @property
    def nbytes(self) -> int:
        ...
    @property
    def ndim(self) -> int:
        ...
    @property
    def shape(self) -> tuple:
        ...
    @property
    def size(self) -> int:
        ...
class PackedWeight:
    """
    A Linear weight (out, in) packed once for the GEMM (see coreformer.ops.pack_weight).
    """
    @staticmethod
    def __new__(*args, **kwargs):
        """
        (*args, **kwargs) -> object
        """
    def __getitem__(self, arg0: slice) -> PackedWeight:
        """
        Rows start:stop (out features), sharing memory when the slice starts a panel.
        """
    def __len__(self) -> int:
        ...
    def __reduce__(self) -> tuple:
        ...
    def __repr__(self) -> str:
        ...
    def unpack(self) -> numpy.typing.NDArray[numpy.float32]:
        """
        The weight as a new float32 (out, in) array (bfloat16 widened exactly).
        """
    @property
    def dtype(self) -> str:
        ...
    @property
    def nbytes(self) -> int:
        ...
    @property
    def panel_width(self) -> int:
        """
        Columns per GEMM panel it was packed for (the ISA's; another width is unpacked at use).
        """
    @property
    def shape(self) -> tuple[int, int]:
        ...
def _cublas_search_dirs(dirs: collections.abc.Sequence[str]) -> None:
    ...
def _cuda_gemm() -> str:
    ...
def _gemm_panel_width() -> int:
    """
    The active ISA's GEMM panel width.
    """
def _packed_weight_from_state(state: tuple) -> PackedWeight:
    """
    The PackedWeight whose __reduce__ gave `state` (pickle's reconstructor).
    """
def _set_cublas(enabled: bool) -> bool:
    """
    Whether linear on a GPU may use cuBLAS (the tests run both paths); returns the previous setting.
    """
def _set_isa(name: str) -> None:
    ...
def _startup_notes() -> list[str]:
    """
    What the core noticed at start-up (environment variables it could not follow), once: coreformer logs them.
    """
def _threads_lost_to_fork() -> bool:
    ...
def adamw_step(params: collections.abc.Iterable[numpy.typing.ArrayLike | Tensor], grads: collections.abc.Iterable[numpy.typing.ArrayLike | Tensor], exp_avgs: collections.abc.Iterable[numpy.typing.ArrayLike | Tensor], exp_avg_sqs: collections.abc.Iterable[numpy.typing.ArrayLike | Tensor], lr: typing.SupportsFloat | typing.SupportsIndex, beta1: typing.SupportsFloat | typing.SupportsIndex, beta2: typing.SupportsFloat | typing.SupportsIndex, eps: typing.SupportsFloat | typing.SupportsIndex, weight_decay: typing.SupportsFloat | typing.SupportsIndex, step: typing.SupportsInt | typing.SupportsIndex, maximize: bool = False) -> None:
    ...
def additive_attention(query: numpy.typing.ArrayLike | Tensor, keys: numpy.typing.ArrayLike | Tensor, values: numpy.typing.ArrayLike | Tensor, w_query: numpy.typing.ArrayLike | Tensor, w_key: numpy.typing.ArrayLike | Tensor, v: numpy.typing.ArrayLike | Tensor, mask: numpy.typing.ArrayLike | Tensor | None = None, return_weights: bool = False) -> typing.Any:
    ...
def additive_attention_backward(grad_output: numpy.typing.ArrayLike | Tensor, query: numpy.typing.ArrayLike | Tensor, keys: numpy.typing.ArrayLike | Tensor, values: numpy.typing.ArrayLike | Tensor, w_query: numpy.typing.ArrayLike | Tensor, w_key: numpy.typing.ArrayLike | Tensor, v: numpy.typing.ArrayLike | Tensor, mask: numpy.typing.ArrayLike | Tensor | None = None) -> tuple:
    ...
def argmax(x: numpy.typing.ArrayLike | Tensor) -> numpy.typing.NDArray[numpy.int64] | Tensor:
    ...
def cross_entropy(logits: numpy.typing.ArrayLike | Tensor, labels: numpy.typing.ArrayLike | Tensor, ignore_index: typing.SupportsInt | typing.SupportsIndex = -100, label_smoothing: typing.SupportsFloat | typing.SupportsIndex = 0.0, reduction: str = 'mean', return_grad: bool = False, *, grad_out: typing.Any = None) -> tuple:
    ...
def dropout(x: numpy.typing.ArrayLike | Tensor, p: typing.SupportsFloat | typing.SupportsIndex, seed: typing.SupportsInt | typing.SupportsIndex, offset: typing.SupportsInt | typing.SupportsIndex = 0, return_mask: bool = False) -> typing.Any:
    ...
def embedding(ids: numpy.typing.ArrayLike | Tensor, table: numpy.typing.ArrayLike | Tensor) -> numpy.typing.NDArray[numpy.float32] | Tensor:
    ...
def embedding_backward(grad_output: numpy.typing.ArrayLike | Tensor, ids: numpy.typing.ArrayLike | Tensor, num_embeddings: typing.SupportsInt | typing.SupportsIndex, padding_idx: int | None = None) -> numpy.typing.NDArray[numpy.float32] | Tensor:
    ...
def empty_cache(device: typing.SupportsInt | typing.SupportsIndex = -1) -> int:
    ...
def from_dlpack(x: typing.Any) -> Tensor:
    ...
def gelu(x: numpy.typing.ArrayLike | Tensor, approximate: str = 'none', out: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | Tensor | None = None) -> numpy.typing.NDArray[numpy.float32] | Tensor:
    ...
def gelu_backward(grad_output: numpy.typing.ArrayLike | Tensor, x: numpy.typing.ArrayLike | Tensor, approximate: str = 'none') -> numpy.typing.NDArray[numpy.float32] | Tensor:
    ...
def get_num_threads() -> int:
    ...
def info() -> dict:
    ...
def layer_norm(x: numpy.typing.ArrayLike | Tensor, weight: numpy.typing.ArrayLike | Tensor | None = None, bias: numpy.typing.ArrayLike | Tensor | None = None, eps: typing.SupportsFloat | typing.SupportsIndex = 1e-05, residual: numpy.typing.ArrayLike | Tensor | None = None, return_sum: bool = False, out: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | Tensor | None = None) -> typing.Any:
    ...
def layer_norm_backward(grad_output: numpy.typing.ArrayLike | Tensor, x: numpy.typing.ArrayLike | Tensor, weight: numpy.typing.ArrayLike | Tensor | None = None, eps: typing.SupportsFloat | typing.SupportsIndex = 1e-05, residual: numpy.typing.ArrayLike | Tensor | None = None) -> tuple:
    ...
def linear(x: numpy.typing.ArrayLike | Tensor, weight: numpy.typing.ArrayLike | Tensor | PackedWeight, bias: numpy.typing.ArrayLike | Tensor | None = None, activation: str | None = None, residual: numpy.typing.ArrayLike | Tensor | None = None, out: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | Tensor | None = None) -> numpy.typing.NDArray[numpy.float32] | Tensor:
    ...
def linear_backward(grad_output: numpy.typing.ArrayLike | Tensor, x: numpy.typing.ArrayLike | Tensor, weight: numpy.typing.ArrayLike | Tensor, activation: str | None = None, pre_activation: numpy.typing.ArrayLike | Tensor | None = None, *, dweight_out: typing.Any = None, dbias_out: typing.Any = None) -> tuple:
    ...
def multi_head_attention(query: numpy.typing.ArrayLike | Tensor, key: numpy.typing.ArrayLike | Tensor, value: numpy.typing.ArrayLike | Tensor, num_heads: typing.SupportsInt | typing.SupportsIndex, in_weight: numpy.typing.ArrayLike | Tensor | PackedWeight, in_bias: numpy.typing.ArrayLike | Tensor | None, out_weight: numpy.typing.ArrayLike | Tensor | PackedWeight, out_bias: numpy.typing.ArrayLike | Tensor | None, attn_mask: numpy.typing.ArrayLike | Tensor | None = None, key_padding_mask: numpy.typing.ArrayLike | Tensor | None = None, is_causal: bool = False) -> numpy.typing.NDArray[numpy.float32] | Tensor:
    ...
def pack_weight(weight: numpy.typing.ArrayLike | Tensor, dtype: typing.Any = 'float32', transposed: bool = False) -> PackedWeight:
    ...
def philox_words(n: typing.SupportsInt | typing.SupportsIndex, seed: typing.SupportsInt | typing.SupportsIndex, offset: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.typing.NDArray[numpy.uint32]:
    ...
def relu(x: numpy.typing.ArrayLike | Tensor, out: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | Tensor | None = None) -> numpy.typing.NDArray[numpy.float32] | Tensor:
    ...
def relu_backward(grad_output: numpy.typing.ArrayLike | Tensor, x: numpy.typing.ArrayLike | Tensor) -> numpy.typing.NDArray[numpy.float32] | Tensor:
    ...
def scale_all(arrays: collections.abc.Iterable[numpy.typing.ArrayLike | Tensor], scale: typing.SupportsFloat | typing.SupportsIndex) -> None:
    ...
def scaled_dot_product_attention(query: numpy.typing.ArrayLike | Tensor, key: numpy.typing.ArrayLike | Tensor, value: numpy.typing.ArrayLike | Tensor, attn_mask: numpy.typing.ArrayLike | Tensor | None = None, is_causal: bool = False, scale: float | None = None, out: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | Tensor | None = None) -> numpy.typing.NDArray[numpy.float32] | Tensor:
    ...
def scaled_dot_product_attention_backward(grad_output: numpy.typing.ArrayLike | Tensor, query: numpy.typing.ArrayLike | Tensor, key: numpy.typing.ArrayLike | Tensor, value: numpy.typing.ArrayLike | Tensor, output: numpy.typing.ArrayLike | Tensor | None = None, lse: numpy.typing.ArrayLike | Tensor | None = None, attn_mask: numpy.typing.ArrayLike | Tensor | None = None, is_causal: bool = False, scale: float | None = None, *, dropout_p: typing.SupportsFloat | typing.SupportsIndex = 0.0, seed: typing.SupportsInt | typing.SupportsIndex = 0, offset: typing.SupportsInt | typing.SupportsIndex = 0) -> tuple:
    ...
def scaled_dot_product_attention_forward(query: numpy.typing.ArrayLike | Tensor, key: numpy.typing.ArrayLike | Tensor, value: numpy.typing.ArrayLike | Tensor, attn_mask: numpy.typing.ArrayLike | Tensor | None = None, is_causal: bool = False, scale: float | None = None, *, dropout_p: typing.SupportsFloat | typing.SupportsIndex = 0.0, seed: typing.SupportsInt | typing.SupportsIndex = 0, offset: typing.SupportsInt | typing.SupportsIndex = 0) -> tuple:
    ...
def set_num_threads(n: typing.SupportsInt | typing.SupportsIndex) -> None:
    ...
def sgd_step(params: collections.abc.Iterable[numpy.typing.ArrayLike | Tensor], grads: collections.abc.Iterable[numpy.typing.ArrayLike | Tensor], momentum_buffers: collections.abc.Iterable[numpy.typing.ArrayLike | Tensor], lr: typing.SupportsFloat | typing.SupportsIndex, momentum: typing.SupportsFloat | typing.SupportsIndex = 0.0, dampening: typing.SupportsFloat | typing.SupportsIndex = 0.0, weight_decay: typing.SupportsFloat | typing.SupportsIndex = 0.0, nesterov: bool = False, first_step: bool = False, maximize: bool = False) -> None:
    ...
def sinusoidal_positions(num_positions: typing.SupportsInt | typing.SupportsIndex, dim: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.float32]:
    ...
def softmax(x: numpy.typing.ArrayLike | Tensor, axis: typing.SupportsInt | typing.SupportsIndex = -1, out: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | Tensor | None = None) -> numpy.typing.NDArray[numpy.float32] | Tensor:
    ...
def softmax_backward(grad_output: numpy.typing.ArrayLike | Tensor, output: numpy.typing.ArrayLike | Tensor, axis: typing.SupportsInt | typing.SupportsIndex = -1) -> numpy.typing.NDArray[numpy.float32] | Tensor:
    ...
def synchronize(device: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    """
    Waits for the GPU work coreformer queued on cuda:device.
    """
def tensor(data: typing.Any, device: typing.Any = 'cpu', dtype: typing.Any = None) -> Tensor:
    ...
def total_norm(arrays: collections.abc.Iterable[numpy.typing.ArrayLike | Tensor], inf_norm: bool = False) -> float:
    ...
def transformer_decoder_layer(x: numpy.typing.ArrayLike | Tensor, memory: numpy.typing.ArrayLike | Tensor | None, num_heads: typing.SupportsInt | typing.SupportsIndex, self_in_weight: numpy.typing.ArrayLike | Tensor | PackedWeight, self_in_bias: numpy.typing.ArrayLike | Tensor | None, self_out_weight: numpy.typing.ArrayLike | Tensor | PackedWeight, self_out_bias: numpy.typing.ArrayLike | Tensor | None, cross_in_weight: numpy.typing.ArrayLike | Tensor | PackedWeight, cross_in_bias: numpy.typing.ArrayLike | Tensor | None, cross_out_weight: numpy.typing.ArrayLike | Tensor | PackedWeight, cross_out_bias: numpy.typing.ArrayLike | Tensor | None, linear1_weight: numpy.typing.ArrayLike | Tensor | PackedWeight, linear1_bias: numpy.typing.ArrayLike | Tensor | None, linear2_weight: numpy.typing.ArrayLike | Tensor | PackedWeight, linear2_bias: numpy.typing.ArrayLike | Tensor | None, norm1_weight: numpy.typing.ArrayLike | Tensor | None, norm1_bias: numpy.typing.ArrayLike | Tensor | None, norm2_weight: numpy.typing.ArrayLike | Tensor | None, norm2_bias: numpy.typing.ArrayLike | Tensor | None, norm3_weight: numpy.typing.ArrayLike | Tensor | None, norm3_bias: numpy.typing.ArrayLike | Tensor | None, activation: str | None = 'relu', norm_first: bool = False, eps1: typing.SupportsFloat | typing.SupportsIndex = 1e-05, eps2: typing.SupportsFloat | typing.SupportsIndex = 1e-05, eps3: typing.SupportsFloat | typing.SupportsIndex = 1e-05, tgt_mask: numpy.typing.ArrayLike | Tensor | None = None, tgt_key_padding_mask: numpy.typing.ArrayLike | Tensor | None = None, memory_mask: numpy.typing.ArrayLike | Tensor | None = None, memory_key_padding_mask: numpy.typing.ArrayLike | Tensor | None = None, tgt_is_causal: bool = False, memory_is_causal: bool = False, k_cache: numpy.typing.ArrayLike | Tensor | None = None, v_cache: numpy.typing.ArrayLike | Tensor | None = None, cache_length: typing.SupportsInt | typing.SupportsIndex = 0, memory_k: numpy.typing.ArrayLike | Tensor | None = None, memory_v: numpy.typing.ArrayLike | Tensor | None = None, memory_length: typing.SupportsInt | typing.SupportsIndex = 0, out: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | Tensor | None = None) -> numpy.typing.NDArray[numpy.float32] | Tensor:
    ...
def transformer_encoder_layer(x: numpy.typing.ArrayLike | Tensor, num_heads: typing.SupportsInt | typing.SupportsIndex, in_weight: numpy.typing.ArrayLike | Tensor | PackedWeight, in_bias: numpy.typing.ArrayLike | Tensor | None, out_weight: numpy.typing.ArrayLike | Tensor | PackedWeight, out_bias: numpy.typing.ArrayLike | Tensor | None, linear1_weight: numpy.typing.ArrayLike | Tensor | PackedWeight, linear1_bias: numpy.typing.ArrayLike | Tensor | None, linear2_weight: numpy.typing.ArrayLike | Tensor | PackedWeight, linear2_bias: numpy.typing.ArrayLike | Tensor | None, norm1_weight: numpy.typing.ArrayLike | Tensor | None, norm1_bias: numpy.typing.ArrayLike | Tensor | None, norm2_weight: numpy.typing.ArrayLike | Tensor | None, norm2_bias: numpy.typing.ArrayLike | Tensor | None, activation: str | None = 'relu', norm_first: bool = False, norm1_eps: typing.SupportsFloat | typing.SupportsIndex = 1e-05, norm2_eps: typing.SupportsFloat | typing.SupportsIndex = 1e-05, attn_mask: numpy.typing.ArrayLike | Tensor | None = None, key_padding_mask: numpy.typing.ArrayLike | Tensor | None = None, is_causal: bool = False, cu_seqlens: numpy.typing.ArrayLike | Tensor | None = None, scale: float | None = None, k_cache: numpy.typing.ArrayLike | Tensor | None = None, v_cache: numpy.typing.ArrayLike | Tensor | None = None, cache_length: typing.SupportsInt | typing.SupportsIndex = 0, out: typing.Annotated[numpy.typing.ArrayLike, numpy.float32] | Tensor | None = None) -> numpy.typing.NDArray[numpy.float32] | Tensor:
    ...
