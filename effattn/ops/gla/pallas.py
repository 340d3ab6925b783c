"""Pallas kernels for chunkwise GLA, forward and backward (Yang et al. 2024, arXiv 2312.06635, Sec. 4.2-4.3;
ALGORITHMS.md sections 5 and 0), split as flash-linear-attention's chunk_gla: the pairwise work in parallel
kernels, the state recurrence in Lightning Attention-2 sweeps.

GLA: S_t = diag(e^{g_t}) S_{t-1} + k_t^T v_t, o_t = q_t S_t (q scaled). Per chunk c of C = 64 rows, with G the
chunk-local inclusive cumsum of g (fp32, base 2; _scan.py) and G_l its last row:
  O_c     = (Q_c ⊙ e^G) S_c + A_c V_c,            A_ij = sum_k q_ik k_jk e^{G_ik - G_jk}   (i >= j)
  S_{c+1} = diag(e^{G_l}) S_c + (K_c ⊙ e^{G_l - G})^T V_c
Why this split: A needs per-channel pairwise decays, which cannot be one dot over a chunk (e^{-G} overflows).
Evaluated inside the sequential chunk loop (the previous design, chunk 16) they made the loop latency-bound with
only B H (V / BV) programs (H200, B=4 T=4096 H=16 K=V=128 bf16: fwd 2.38 ms, fwd+bwd 7.0 ms). Here:
  1. _intra.py, parallel over (b, h, 16-row block): A by secondary chunking (a dot about a reference row for the
     earlier blocks, [16, 8, 32] pairwise exp tiles for the diagonal block), stored in the dot dtype, and the
     sweeps' factors Q ⊙ e^G, K ⊙ e^{G_l - G} in the dot dtype (they are rounded to it before their dots anyway);
  2. _sweeps.py, one program per (b, h, value tile) walks the chunks with the fp32 state [K, BV] on chip and does
     only dots (as simple_gla/pallas.py), reading one row G_l of G per chunk.
Backward (custom VJP), the same split:
  dA = dO V^T (i >= j); intra dq_i = sum_{j<=i} dA_ij k_j e^{G_i-G_j}, dk_j = sum_{i>=j} dA_ij q_i e^{G_i-G_j} in
  _intra.py (parallel); the sweeps add the inter-chunk terms (dq forward in time per key tile, dk reverse per key
  tile, dv = A^T dO + (K ⊙ e^{G_l-G}) dS_{c+1} reverse per value tile; one launch, a grid axis picks the role;
  KernelConfig.bwd_apart gives roles launches of their own).
  The forward saves A and G (instead of g) for it; the state S and dS are recomputed, never stored.
  KernelConfig.bwd_states (opt-in; slower on the H200, 4.16 against 3.50 ms fwd+bwd): instead state-only sweeps
  store S and dS_q per chunk and the inter-chunk terms run parallel over (b, h, chunk), flash-linear-attention's
  chunk_gla_bwd layout (_state_grads.py).
Launches: forward gates (_scan.py), intra, output sweep; backward intra, W = V dS_T^T (only when the final state
is read: its cotangent is otherwise a symbolic zero, and every d final_state term drops out), sweeps, dg (_scan.py).

Gate gradient (ALGORITHMS.md section 0, per channel): dg_l = sum_{t>=l} (q_t dq_t - k_t dk_t) + sum_v S_T dS_T,
a sum over query-key pairs (i, j) with j < l <= i in which pairs with both ends >= l cancel. Regrouped so that
nothing large cancels in bf16:
  - intra-chunk pairs, P_ijk = q_ik dA_ij k_jk e^{G_ik-G_jk} (i > j): row sum minus column sum per position,
    q ⊙ dQ_strict - k ⊙ dK_strict in fp32 (the gate-free diagonal never enters; the dots of _intra.py precise);
  - cross-chunk pairs through the state: q ⊙ (dO S^T) e^G and k ⊙ (V dS_q^T) e^{G_l-G}, with S and dS_q used to
    ~2^-17 in bf16 (`precise_dg`: each fp32 operand split into two bf16 dot operands);
  - keys paired with d final_state, E_j = e^{sum_{l>j} g} k_j (v_j dS_T), summed forward (dS = dS_q + λ dS_T, λ
    the per-channel decay to the end), plus e^{sum g} sum_v h0 dS_T.
The sweeps write these terms per position with their chunk totals; _scan.py does the cumulative sums within chunks
and adds the sums over later / earlier chunks of the [B, N, H, K] totals (jnp).

Triton lowering constraints as in simple_gla/pallas.py: no value slices (sub-blocks and rows are loaded from refs
with pl.ds), no cumsum, power-of-two blocks (K, V, T padded).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from effattn.ops.common.dispatch import default_backend
from effattn.ops.common.pallas_triton import F32 as _F32
from effattn.ops.common.pallas_triton import LOG2E as _LOG2E
from effattn.ops.common.pallas_triton import checked_chunk, checked_interpret
from effattn.ops.common.pallas_triton import next_pow2 as _next_pow2
from effattn.ops.common.pallas_triton import pad_axis as _pad_axis
from effattn.ops.common.sequence_split import num_segments, primal_with_vjp_of, split_over_segments
from effattn.ops.gla import _intra, _scan, _split, _state_grads, _sweeps
from effattn.ops.simple_gla.pallas import _MAX_HEAD_DIM, _Ctx
from effattn.ops.simple_gla.pallas import split_states_args


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Chunk, tile widths and Triton launch parameters (tune_candidates lists the alternatives).

  Timed on the H200 (jax 0.11.2, B=4 T=4096 H=16 K=V=128 bf16, 48 forward and 25 backward configurations of
  tune_candidates): the forward intra kernel at 2 warps and 16 key channels per step took the forward from 1.36
  to 1.00 ms (4 warps / 32 channels before); 16 channels in the backward intra kernel cost ~1 ms, so 'halves' keeps
  32 (intra_bwd_for; 'rows', the default at K = 128 since, takes all 128); backward sweeps at 4 warps, 2 stages:
  6.10 -> 5.33 ms fwd+bwd at the same forward settings.
  The rest are first guesses.

  Compiled offline for sm_90 at the earlier defaults (jax 0.10.2's Triton IR, B=4 T=4096 H=16 K=V=128 bf16, triton 3.6,
  ptxas -v), registers / spills: gates 83 / 0 (4 warps), intra fwd 128 / 0 (4 warps, 2 stages), output sweep
  128 / 0 (8 warps, 3 stages; 164 KB shared memory, so one program per SM; block_v 32 at 2 stages: 75 registers,
  96 KB, two per SM), intra bwd 255 / 0 (4 warps, 2 stages), W 64 / 0, backward sweeps 255 / 0 (8 warps, 3
  stages), dg 140 / 0 (4 warps). fp32 inputs (the checking path) spill in the sweeps.
  """
  chunk: int = 64            # rows per chunk (16, 32 or 64; sub-blocks of 16)
  chunk_fp32: int = 16       # fp32 inputs use min(chunk, chunk_fp32): exponent differences G_i - G_j of stored
                             # fp32 G lose |G| 2^-24, and |G| grows with the chunk (dg rel. error at n = 0.1,
                             # T = 777: 4.3e-6 at 16, 7.5e-6 at 32, 1.1e-5 at 64; DESIGN.md's fp32 bound is 1e-5)
  block_v: int = 64          # forward sweep: value-tile width of each program
  num_warps: int = 8         # forward sweep
  num_stages: int = 3
  num_warps_intra: int | None = None  # forward intra kernel (one program per 16-row block); None: by head dim
  num_stages_intra: int | None = None  # None: by head dim (intra_fwd_for)
  num_warps_intra_bwd: int | None = None  # backward intra kernel; None: by head dim (intra_bwd_tiles_for)
  num_stages_intra_bwd: int = 2
  intra_width: int | None = None      # forward intra kernel: key channels per step ([16, 8, width] fp32 pairwise
                                      # tiles); None: by head dim (intra_fwd_for)
  intra_width_bwd: int | None = None  # backward intra kernel: the same (intra_width_bwd_for)
  intra_diag: str | None = None      # forward intra kernel's diagonal blocks: 'halves' (_intra._fwd_kernel),
                                     # 'rows' (_intra_rows.py, fla's loop over key rows) or 'dots' (_intra_dots.py:
                                     # dots about the block's first row where its decay span allows, else 'rows';
                                     # the default); None: intra_diag_for
  intra_diag_bwd: str | None = None  # the same for the backward intra kernel (intra_bwd_for), or 'rows2' (dk from
                                     # a second loop, over query rows; 1.98 ms against 1.41 at K = 128)
  intra_key_tile_bwd: int | None = None  # backward intra kernel: key channels per program (16 ... 128, or 0: all,
                                         # one program per 16-row block computing its dA pieces; None: by head
                                         # dim, intra_bwd_tiles_for). With a tile, dA = dO V^T is computed once per
                                         # chunk (_intra.chunk_dA, fp32 [B, Tp, H, C]) and read by the Kp / tile
                                         # programs of each block (flash-linear-attention's layout: fewer registers
                                         # per program, more programs per SM).
                                         # ptxas (sm_90a, bf16, 'dots'): K = 128, all channels 255 registers and
                                         # 96 bytes spilled, 2 programs per SM; tile 64: 168, 3 per SM; 32: 137,
                                         # 3; 32 at 2 warps: 186, 5; 16 at 2 warps: 168, 6. K = 64: all 187, 2
                                         # per SM; tile 32: 128 (16 bytes spilled), 4; 16 at 2 warps: 168, 6
  intra_unroll: bool = True  # 'rows' / 'rows2' kernels: their 16-step row loops written out (H200, K = 128:
                             # intra fwd 0.563 -> 0.481 ms, bwd 1.427 -> 1.341, fwd+bwd 3.501 -> 3.331)
  block_k_dq: int = 64       # backward dq sweeps: key-tile width
  block_k_dk: int = 32       # backward dk sweeps: key-tile width (64 spills ~270 bytes at 8 warps: fp32 [bk, V] dS)
  block_v_bwd: int = 64      # backward dv sweeps: value-tile width
  num_warps_bwd: int = 4
  num_stages_bwd: int = 2
  # backward sweeps' grid (roles, B, H) instead of (B, H, roles): CUDA dispatches axis 0 fastest, so that all roles
  # of one (batch, head) run in the same wave and its dk (dq, dv) programs walk the same v, dO chunks together,
  # sharing them in L2. None: roles first when d final_state is zero (training's case). H200, B=4 T=4096 H=16 K=V=128
  # (kernel_parts.py --parts bwd_sweeps,bwd_sweeps_o,fwd_bwd,fwd_bwd_o --config default --config bwd_roles_first=true,
  # results/gpu_checks-2026-12-03_s7/gla_unread_state.json), ms, (B, H, roles) / roles first: sweeps without d
  # final_state 1.592 / 1.247, forward+backward 3.040 / 2.802; with it 1.324 / 1.458, 2.865 / 3.015.
  bwd_roles_first: bool | None = None
  # roles whose sweeps run in a launch of their own, joined by '+' ('dq', 'dq+dv', ...), the others together in one
  # more (None: all three in one launch). In one launch the roles share one register allocation: ptxas (sm_90a,
  # K = V = 128, no d final_state) spills 820 bytes at 255 registers; 'dq' at block_k_dq=32 spills 0 (dq) and 80
  # (dk, dv). Two launches of 256 programs take as many waves (2 programs per SM) as one of 512. H200 (eighth
  # session, benchmarks/README.md): no gain (dq+dv apart 2.742 against 2.747 ms fwd+bwd, the others slower).
  bwd_apart: str | None = None
  # The sweeps' tiles, warps and stages above: the fastest of ten on the H200 (kernel_parts.py --parts bwd_sweeps,
  # results/gpu_checks-2026-12-03_s6/call5_gla_bwd_sweeps.json): 1.257 ms; block_v_bwd 32 1.306, 128 1.934;
  # block_k_dk 16 1.487, 64 1.549; block_k_dq 32 1.725, 128 2.763; 8 warps 2.055; 3 stages 1.547.
  precise_dg: bool = True    # bf16: gate-gradient terms to ~2^-17 (two bf16 dots per fp32 operand)
  # the backward intra kernel's dq and dk (added to the sweeps' inter-chunk parts) stored in the dot dtype instead
  # of fp32: at B=4 T=4096 H=16 K=128 bf16, 268 MB less written and read of the ~1.3 GB of fp32 [B, T, H, K]
  # intermediates; one more bf16 rounding in dq and dk (within DESIGN.md's 5e-3), none in the gate terms. H200
  # (kernel_parts.py --parts fwd_bwd_o, results/gpu_checks-2026-12-03_s9/call3_gla_bf16.json): fwd+bwd 2.627 ms
  # against fp32's 2.722, backward intra kernel 0.748 against 0.771.
  bf16_intra_grads: bool = True
  # the forward's q ⊙ e^G and k ⊙ e^{G_l - G} (dot dtype, [B, T, H, K] each) kept for the backward sweeps, so that
  # the backward intra kernel does not write them again. The cost is memory: two more residuals per layer (at B=4
  # T=4096 H=16 K=128 bf16, 134 MB); False gives it back. H200, that shape (kernel_parts.py --parts fwd_bwd_o, tenth
  # session of 2026-12-04, benchmarks/README.md): fwd+bwd 2.593 ms against 2.616 without.
  save_factors: bool = True
  bwd_states: bool = False   # backward from stored chunk states (_state_grads.py, fla's chunk_gla_bwd layout:
                             # state-only sweeps, then dq, dk, dv parallel over chunks; tiles block_k_dq,
                             # block_k_dk, block_v_bwd); H200: fwd+bwd 4.16 ms against the sweeps' 3.50 (4.24
                             # at num_warps_bwd=8, spill-free), benchmarks/results/gla_configs_2026-12-03_s4.json
  # Long T at small B * H (ops/common/sequence_split.py): segments as batch rows up to split_programs output-sweep
  # programs (None: 1 per SM on GPU, no split elsewhere; 0: never), segments of >= split_min_len rows.
  split_programs: int | None = None
  split_min_len: int = 1024
  # segment states of the split: 'xla' or 'kernel' (common/block_states.py: 2.3x slower here on the H200, its
  # per-channel [C, K] decay sums run in every chunk step; simple_gla's scalar form uses it) or 'kernel_fold'
  # (block_states with the decays folded into k: the whole op 2.80 ms at B=8 T=8192 but 6.91 at B=1 T=65536 on the
  # H200, against 3.94 with 'xla'), or 'sweeps' (_split.py: the states from the kernel's own gates, intra and a
  # state-only sweep, no [B, T, H, K] XLA passes; primal forward only, gradients as 'xla'). H200 forward at
  # B*T = 65536: 'sweeps' 2.880 ms at T=2048 and 3.039 at T=65536 (1.06x), 'xla' 2.901 and 3.941 (1.36x)
  # (benchmarks/results/gpu_checks-2026-12-03_s5/ops_gpu_scaling*.json).
  split_states: str = 'sweeps'
  # the chunk-local cumsum kernels (_scan.py: the forward's gates, the backward's dg): columns per step, columns per
  # program (None: all), warps, and dg's bf16 parts per fp32 operand for bf16 inputs (3: ~2^-24; 2: ~2^-17, far
  # below the bf16 tolerance, a third fewer dots; fp32 inputs: 3). H200, B=4 T=4096 H=16 K=128 (kernel_parts.py
  # --parts gates,dg,fwd_bwd_o, results/gpu_checks-2026-12-04_s10/call1_gla_scan.json, call2_gla_scan2.json), dg /
  # fwd+bwd ms: 3 parts 0.142 / 2.639 and 0.143 / 2.638, 2 parts 0.127 / 2.624 and 0.128 / 2.615; 64-wide steps
  # 0.165 / 2.683; 8 warps 0.281 / 2.826; programs of 32 columns 0.127 / 2.625, of 64 0.135 / 2.656.
  scan_width: int = 32
  scan_block_k: int | None = None
  num_warps_scan: int = 4
  dg_parts: int = 2
  split_sub_block: int | None = None  # 'kernel' / 'kernel_fold': rows per block_states program (as simple_gla's)

  # The forward intra kernel by padded head dim Kp, where left None. Timed on the H200 (bf16, 'rows', unrolled):
  # at K = 128 (B=4 T=4096 H=16) 16 channels per step at 2 warps, 0.481 ms (32 channels: 0.497 at 2 warps, 0.619
  # at 4); at K = 64 (the LM's B=8 T=8192 H=12) all 64 channels at 4 warps and 1 stage, 0.729 ms (32 channels:
  # 0.746 at 2 warps, 0.821 at 4; 8 warps 1.05-1.39; 'halves' 1.283), forward 1.685 -> 1.100 ms and
  # forward+backward 5.712 -> 5.131 against 'halves' (benchmarks/results/gla_k64_*_2026-12-03.json).
  def intra_fwd_for(self, kp: int) -> tuple[int, int, int]:
    """(key channels per step, pipeline stages, warps) of the forward intra kernel."""
    return (self.intra_width or (kp if kp <= 64 else 16), self.num_stages_intra or (1 if kp <= 64 else 2),
            self.num_warps_intra or (4 if kp <= 64 else 2))

  # The diagonal blocks, timed on the H200 (bf16, kernel_parts.py, two runs each;
  # benchmarks/results/gpu_checks-2026-12-03_s6/call1_gla_dots_*.json and call4_*): 'dots' (dots about the block's
  # first row where its decay span allows, else 'rows'; _intra_dots.py) against 'rows' at K = 128 (B=4 T=4096
  # H=16): intra fwd 0.480 -> 0.276 ms, intra bwd 1.334 -> 0.817, forward 0.709 -> 0.501, fwd+bwd 3.557 -> 2.824
  # (2.869 in the second run); at K = 64 (B=8 T=8192 H=12, against 'halves' in the backward) intra fwd 0.729 ->
  # 0.485, intra bwd 1.843 -> 1.299, fwd+bwd 5.373 -> 4.572. Around 'dots', other intra widths, warps and stages
  # were equal or slower (call5_gla_intra_dots.json). Earlier, 'rows' against 'halves' at K = 128
  # (results/gla_intra_rows_2026-12-03.json): forward 0.588 ms against 0.781; backward over all 128 channels at
  # 4 warps 1.423 against 'halves' at 32 channels 1.587.
  def intra_diag_for(self, kp: int) -> str:
    return self.intra_diag or 'dots'

  def intra_bwd_for(self, kp: int) -> tuple[str, int]:
    """(diagonal-block form, key channels per step) of the backward intra kernel."""
    diag = self.intra_diag_bwd or 'dots'
    return diag, self.intra_width_bwd or (kp if kp <= 64 or diag != 'halves' else 32)

  # The backward intra kernel's key tiles, timed on the H200 (bf16, B=4 T=4096 H=16 K=128; kernel_parts.py --parts
  # intra_bwd,fwd_bwd_o, results/gpu_checks-2026-12-03_s8/call{1,6}_gla_key_tiles*.json), intra_bwd / fwd+bwd
  # without d final_state, ms: all channels at 4 warps 0.817 / 2.777, 0.820 / 2.791, 0.824 / 2.802; 64-wide tiles at
  # 2 warps 0.783 / 2.742, 0.782 / 2.747; 64 at 4 warps 0.908 / 2.872; 32 at 2 warps 0.915 / 2.877. K = 64 untimed:
  # all channels there.
  def intra_bwd_tiles_for(self, kp: int) -> tuple[int | None, int]:
    """(key channels per program, None: all; warps) of the backward intra kernel."""
    tile = self.intra_key_tile_bwd
    if tile is None:
      tile = 64 if kp >= 128 and self.intra_bwd_for(kp)[0] != 'rows2' else 0
    warps = self.num_warps_intra_bwd or (2 if tile == 64 and kp >= 128 else 4)
    return tile or None, warps


DEFAULT_CONFIG = KernelConfig()


def _forward(q, k, v, g, h0, ctx, cfg, interpret):
  """(o, final state, A, G, q ⊙ e^G, k ⊙ e^{G_l - G}); q, k, g [B,Tp,H,Kp] (g raw log decays), v [B,Tp,H,Vp]."""
  gc, a, qg, kg = _intra.chunk_pieces(q, k, g, ctx, cfg, interpret)
  o, ht = _sweeps.forward(qg, kg, v, gc, a, h0, ctx, cfg, interpret)
  return o, ht, a, gc, qg, kg


def inter_chunk_backward(cfg: KernelConfig):
  """The backward's inter-chunk part for cfg: the sequential sweeps (_sweeps.backward) or, with cfg.bwd_states,
  state-only sweeps and per-chunk gradients (_state_grads.backward); the same arguments and outputs."""
  return _state_grads.backward if cfg.bwd_states else _sweeps.backward


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _core(q, k, v, g, h0, ctx, cfg, interpret):
  return tuple(_forward(q, k, v, g, h0, ctx, cfg, interpret)[:2])


def _core_fwd(q, k, v, g, h0, ctx, cfg, interpret):
  # symbolic_zeros (defvjp below): each array argument comes as a CustomVJPPrimal (value, perturbed)
  q, k, v, g, h0 = (None if x is None else x.value for x in (q, k, v, g, h0))
  o, ht, a, gc, qg, kg = _forward(q, k, v, g, h0, ctx, cfg, interpret)
  # G replaces g (same size for fp32 g; g's dtype rides along as an empty array)
  factors = (qg, kg) if cfg.save_factors else None
  return (o, ht), (q, k, v, gc, h0, a, factors, jnp.zeros((0,), g.dtype))


def _core_bwd(ctx, cfg, interpret, res, cts):
  q, k, v, gc, h0, a, factors, g_like = res
  do, dht = cts
  # A final state nobody reads (training) has a symbolic-zero cotangent: the backward then skips every d
  # final_state term (the W = V dS_T^T kernel, the dk sweep's λ dS_T terms and the dv sweep's start from dS_T).
  do = jnp.zeros(do.shape, q.dtype) if isinstance(do, SymbolicZero) else do.astype(q.dtype)
  dht = None if isinstance(dht, SymbolicZero) else dht.astype(_F32)
  dq_i, dk_i, x_i, *written = _intra.intra_grads(q, k, gc, v, do, ctx, cfg, interpret, factors is None)
  qg, kg = written if factors is None else factors
  dq, dk, dv, xq, xq_tot, y, y_tot, xk_tot, dh0 = inter_chunk_backward(cfg)(
      q, k, v, gc, a, dq_i, dk_i, x_i, qg, kg, h0, do, dht, ctx, cfg, interpret)
  # dg_l = sum_{t>=l} (x_q - x_k)_t + sum_{t<l} E_t + e^{sum g} sum_v h0 dS_T (module docstring), with
  # sum_{t>=l} x_k = sum_T x_k - sum_{t<l} x_k: reverse cumsum of x_q, exclusive cumsum of y = x_k + E, within
  # chunks in _scan.py, plus per chunk the sums over later / earlier chunks of the kernel's chunk totals.
  b, _, h, kp = xq.shape
  c = ctx.chunk
  later = jnp.flip(jnp.cumsum(jnp.flip(xq_tot, 1), axis=1), 1) - xq_tot       # sums over later chunks
  earlier = jnp.cumsum(y_tot, axis=1) - y_tot                                 # sums over earlier chunks
  off = later + earlier - xk_tot.reshape(b, 1, h, kp)
  if h0 is not None and dht is not None:
    g_sum = jnp.sum(gc[:, c - 1::c], axis=1) / _LOG2E                         # sum_T g from the chunk sums
    off = off + (jnp.exp(g_sum) * jnp.sum(h0 * dht, axis=-1))[:, None]
  dg = _scan.chunk_dg(xq, y, off, c, g_like.dtype, interpret, width=cfg.scan_width, num_warps=cfg.num_warps_scan,
                      parts=3 if ctx.fp32 else cfg.dg_parts, block_k=cfg.scan_block_k)
  return dq, dk, dv, dg, (None if h0 is None else dh0.astype(h0.dtype))


_core.defvjp(_core_fwd, _core_bwd, symbolic_zeros=True)


def kernel_gla(q, k, v, g, *, scale, initial_state=None, segment_ids=None, chunk_size=64,
               config: KernelConfig | None = None, interpret: bool | None = None):
  """Returns (o [B,T,H,V] in q's dtype, final_state fp32 [B,H,K,V]).

  chunk_size (impl 'chunk''s parameter) is ignored: the kernel's chunk is config.chunk. Raises
  NotImplementedError (so that impl='auto' falls back to 'chunk') for segment_ids, on TPU and for head dims
  above 128. interpret None: Pallas interpret mode everywhere but on GPU.
  """
  del chunk_size
  interpret = checked_interpret('gla', q, v, segment_ids, interpret, _MAX_HEAD_DIM)
  backend = default_backend()
  cfg = DEFAULT_CONFIG if config is None else config
  states_args = split_states_args(cfg, interpret, extra=('sweeps',))  # checked on every call
  t, kd, vd = q.shape[1], q.shape[-1], v.shape[-1]
  dtype = jnp.promote_types(q.dtype, jnp.bfloat16)  # fp16 / bf16 / fp32 kernels; mixed inputs promote
  dtype = jnp.promote_types(jnp.promote_types(dtype, k.dtype), v.dtype)
  chunk = min(cfg.chunk, cfg.chunk_fp32) if dtype == jnp.float32 else cfg.chunk
  checked_chunk('gla', chunk, (16, 32, 64), 'config.chunk')
  tp = -(-t // chunk) * chunk
  kp, vp = _next_pow2(kd), _next_pow2(vd)
  ctx = _Ctx(jnp.dtype(dtype), float(scale), chunk)
  gdt = g.dtype if g.dtype in (jnp.bfloat16, jnp.float32) else _F32

  def padded(run):
    """run(q, k, v, g, h0) on the inputs padded to the kernel's shapes (Tp, Kp, Vp), its outputs cut back."""
    def f(q, k, v, g, initial_state):
      pad = lambda x, d, dt: _pad_axis(_pad_axis(x.astype(dt), 1, tp), 3, d)
      h0 = None
      if initial_state is not None:
        h0 = _pad_axis(_pad_axis(initial_state.astype(_F32), 2, kp), 3, vp)
      o, ht = run(pad(q, kp, dtype), pad(k, kp, dtype), pad(v, vp, dtype), pad(g, kp, gdt), h0)
      return o[:, :t, :, :vd].astype(q.dtype), ht[:, :, :kd, :vd]
    return f

  segments = num_segments(q.shape[0], q.shape[2], t, -(-vp // min(cfg.block_v, vp)), chunk,
                          split_programs=cfg.split_programs, min_len=cfg.split_min_len, backend=backend)
  if segments > 1:
    whole = dataclasses.replace(cfg, split_programs=0)
    kernel = lambda q, k, v, g, h0: kernel_gla(q, k, v, g, scale=scale, initial_state=h0, config=whole,
                                               interpret=interpret)
    by_segments = lambda q, k, v, g, h0: split_over_segments(
        kernel, q, k, v, g, initial_state=h0, segments=segments, chunk=chunk, **states_args)
    if cfg.split_states != 'sweeps':
      return by_segments(q, k, v, g, initial_state)
    from_sweeps = padded(lambda *args: _split.split_forward(*args, ctx, cfg, bool(interpret), segments))
    return primal_with_vjp_of(from_sweeps, by_segments)(q, k, v, g, initial_state)
  return padded(lambda *args: _core(*args, ctx, cfg, bool(interpret)))(q, k, v, g, initial_state)


# ----------------------------------------------------------------------------------------------------
# Benchmark hooks (for benchmarks/ops_gpu.py).

def benchmark_fn(config: KernelConfig | None = None):
  """fn(q, k, v, g) -> o, the kernel at one configuration (default scale)."""
  return lambda q, k, v, g: kernel_gla(q, k, v, g, scale=q.shape[-1] ** -0.5, config=config)[0]


def tune_candidates(base: KernelConfig = DEFAULT_CONFIG) -> dict[str, list[KernelConfig]]:
  """Configurations worth timing on the GPU, {'fwd': [...], 'fwd_bwd': [...]}, all derived from base: time the
  'fwd' list, then call again with base = the fastest of it and time that call's 'fwd_bwd' list (which changes
  only backward fields)."""
  fwd = [dataclasses.replace(base, chunk=c, block_v=bv, num_warps=w, num_stages=s)
         for c in (32, 64) for bv in (32, 64, 128) for w in (4, 8) for s in (2, 3) if not (bv == 128 and w == 4)]
  fwd += [dataclasses.replace(base, num_warps_intra=w, num_stages_intra=s, intra_width=iw, intra_diag=d)
          for d in ('rows', 'dots') for w in (2, 4, 8) for s in (1, 2, 3) for iw in (16, 32, 64, 128)]
  fwd += [dataclasses.replace(base, intra_unroll=True)]
  bwd = [dataclasses.replace(base, block_k_dq=bq, block_k_dk=bk, block_v_bwd=bv, num_warps_bwd=w, num_stages_bwd=s)
         for bq in (32, 64) for bk in (16, 32, 64) for bv in (32, 64) for w in (4, 8) for s in (2, 3)]
  # (block_k_dq=32, block_k_dk=16 at 4 warps: the sweeps without spills, ptxas_report.py; 628 bytes at the default)
  # (intra_width_bwd=64: 14% off fwd+bwd at K = 64)
  bwd += [dataclasses.replace(base, num_warps_intra_bwd=w, num_stages_intra_bwd=s, intra_width_bwd=iw,
                              intra_diag_bwd=d)
          for d in ('rows', 'dots') for w in (2, 4, 8) for s in (1, 2) for iw in (16, 32, 64, 128)]
  bwd += [dataclasses.replace(base, intra_key_tile_bwd=t, num_warps_intra_bwd=w, intra_diag_bwd='dots')
          for t in (0, 32, 64) for w in (2, 4)]  # key tiles from stored dA (0: all channels)
  bwd += [dataclasses.replace(base, intra_unroll=True)]
  bwd += [dataclasses.replace(base, precise_dg=False)]  # faster, but dg's error grows (1e-2 at T = 1000)
  bwd += [dataclasses.replace(base, bwd_states=True)]   # stored chunk states, gradients parallel over chunks
  return {'fwd': fwd, 'fwd_bwd': bwd}
