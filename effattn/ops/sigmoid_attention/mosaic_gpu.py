"""Sigmoid attention forward on Hopper in Mosaic GPU: FlashSigmoid's score (Ramapuram et al. 2024,
arXiv 2409.04431, Sec. 3; ALGORITHMS.md section 2) in FlashAttention-3's warp-specialised schedule (Shah
et al. 2024, arXiv 2407.08608, Sec. 3.1-3.2: a producer warpgroup streams K, V tiles by TMA into a ring of
shared-memory slots; two consumer warpgroups, 64 query rows each, issue asynchronous WGMMAs and take turns
on the tensor cores, so that one's score math overlaps the other's matrix products).

    O = (sigma(s Q K^T + b) ⊙ M) V,   sigma(x) = 1 / (1 + 2^(-x log2 e))

Why Mosaic GPU and not the Triton lowering (softmax_attention/pallas.py, which keeps the backward): on the
H200 the Triton kernel's forward is bound by its instruction stream (the score math and the two dots do not
overlap; benchmarks/README.md, "sigmoid math") and ran 1.14x cuDNN's softmax forward. Warp specialisation
is what overlaps them, and Triton's Pallas lowering cannot express it. The structure follows jax's
FlashAttention-3 example (jax.experimental.pallas.ops.gpu.attention_mgpu); sigmoid needs no running max, row
sum or rescaling of the accumulator, so each step is QK^T, one exp2 and one reciprocal per score, the causal
mask on the diagonal tiles only, and PV.

MosaicConfig(overlap=True) (KernelConfig.sigmoid_forward='mosaic_overlap'; opt-in: 29% slower on the H200) adds FA3's
intra-warpgroup overlap (Sec. 3.2, Alg. 2): QK^T of step j and PV of step j - 1 go out together, and step j's
score math runs while PV_{j-1} is still on the tensor cores (wgmma_accumulator_load(wait_n=1)).
MosaicConfig(persistent=True) (sigmoid_forward='mosaic_persistent'; opt-in: 14% slower on the H200) runs one
program per SM over the query tiles in longest-first order, the K, V slots and their barrier phases continuing from
tile to tile.

Scope (`unsupported_reason` names what is missing, and flash_attention then takes the Triton forward):
Hopper GPUs (sm_90: WGMMA), bf16 (the kernel is written for fp16 too, not yet run on a GPU), head dims that
are multiples of 64 up to 128, no window, T a multiple of 128 (flash_attention pads T; padded keys meet zero
values, so they add nothing even without a causal mask).
Not in Pallas interpret mode: Mosaic GPU's barriers and TMA have no CPU model, so tests/ops run it on GPUs;
on CPU the tests check that it lowers for CUDA.

H200 (jax 0.11.2), bf16, forward ms, this kernel / the Triton kernel / cuDNN softmax (one run,
benchmarks/results/sigmoid_mosaic_probe_2026-12-03.json): causal B=4 T=4096 H=16 D=128 0.584 / 0.646 / 0.569,
B=2 T=8192 1.088 / 1.194 / 1.048, B=8 T=8192 H=12 D=64 2.477 / 2.550 / 1.959; non-causal B=4 T=4096 1.103 /
1.121 / 0.951. Within 3-4% of cuDNN's softmax at D = 128, not yet below it (1.063x in the rerun of
results/sigmoid_forwards_2026-12-03.json; 1.11x kernel against kernel, results/profile_*_fwd_2026-12-03.json). At
D = 64 the Newton reciprocal, since the default there (MosaicConfig.reciprocal_for), took 2.519 -> 2.287 ms.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
from jax import lax

from effattn.ops.common.pallas_triton import LOG2E as _LOG2E
from effattn.ops.common.pallas_triton import rcp_newton
from effattn.ops.common.sequence_split import sm_count


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
    block_q: int = 64  # query rows per consumer warpgroup (two per program)
    block_kv: int = 128  # keys per pipeline step
    max_concurrent_steps: int = 2  # K, V slots in shared memory
    longest_first: bool = True  # causal: launch the query tiles with the most keys first
    # 1 / (1 + 2^a): 'approx' (the MUFU reciprocal: two MUFU ops per score with the exp2) or 'newton' (FMA-pipe
    # Newton steps from a bit-trick guess, common/pallas_triton.rcp_newton: one MUFU op per score, as softmax).
    # None: by head dim (reciprocal_for). Timed on the H200 (bf16, causal; results/sigmoid_forwards_2026-12-03.json):
    # at D = 64 (8x8192x12) 'newton' 2.287 ms against 'approx' 2.519, where each score carries half the matrix
    # work, so the MUFU pipe is the limit; at D = 128 (4x4096x16) 0.583 against 0.577, equal within noise.
    reciprocal: str | None = None
    # FlashSigmoid's sigma(x) = 0.5 + 0.5 tanh(x / 2) instead (tanh.approx.f32 under approx_math: one MUFU op and two
    # FMAs per score, no reciprocal; KernelConfig.sigmoid_math='tanh', the default there). H200, B=4 T=4096 H=16
    # D=128 causal (results/gpu_checks-2026-12-03_s9/call2_sigmoid_forwards.json): 0.482 ms against 0.597.
    tanh: bool = False
    # FA3's intra-warpgroup overlap (Shah et al. 2024, Sec. 3.2, Alg. 2) on top of the ping-pong: each step issues
    # QK^T of step j and PV of step j - 1 back to back, waits for the first only, and does step j's score math while
    # PV_{j-1} runs, instead of waiting for PV before the next QK^T. P_{j-1} stays in registers until its WGMMA is
    # done (an optimisation barrier after the wait keeps LLVM from reusing them): 32 more registers per thread.
    # H200, B=4 T=4096 H=16 D=128 causal (results/gpu_checks-2026-12-03_s8/call2_sigmoid_overlap.json): 0.757 ms
    # against 0.586 without; 3 slots 0.786, 64-key steps 0.967. Correct (its GPU tests pass), not faster.
    overlap: bool = False
    # A persistent grid (FA3, Sec. 3.1; its tile scheduler): one program per SM walks the query tiles i = sm,
    # sm + SMs, ... in longest-first order, so that the producer streams the next tile's K, V while the consumers
    # finish the current one, and programs' start-up (barriers, register reallocation, the first loads) is paid once
    # per SM instead of once per tile (2048 tiles on 132 SMs at B=4 T=4096 H=16). Not with `overlap`. Correct (its
    # GPU tests pass), not faster: H200 0.681 ms against 0.597, with tanh 0.550 against 0.482 (call2 above).
    persistent: bool = False

    def reciprocal_for(self, d: int) -> str:
        return self.reciprocal or ('newton' if d <= 64 else 'approx')


def unsupported_reason(q, k, v, *, window, tp: int, config: MosaicConfig = MosaicConfig()) -> str | None:
    """Why this forward cannot run here (None: it can). q, k, v as padded by flash_attention."""
    if jax.default_backend() != 'gpu':
        return 'not on a GPU'
    cc = getattr(jax.devices()[0], 'compute_capability', '0')
    if not 9.0 <= float(cc) < 10.0:
        return f'compute capability {cc}: WGMMA is Hopper-only (sm_90)'
    try:
        import jax.experimental.pallas.mosaic_gpu as plgpu
    except ImportError as e:
        return f'no Mosaic GPU ({e})'
    if not all(hasattr(plgpu, n) for n in ('kernel', 'wgmma', 'copy_gmem_to_smem', 'set_max_registers', 'Layout')):
        return f'this jax ({jax.__version__}) lacks the Mosaic GPU API used here'
    if window is not None:
        return 'windowed'
    if q.dtype != jnp.bfloat16 or k.dtype != q.dtype or v.dtype != q.dtype:
        return f'dtype {q.dtype} (bf16 only: fp16 has not yet run on a GPU)'
    d = q.shape[-1]
    if d % 64 or d > 128 or v.shape[-1] != d:
        return f'head dims K={d}, V={v.shape[-1]} (need K = V, a multiple of 64 up to 128)'
    rows = max(2 * config.block_q, config.block_kv)
    if tp % rows:
        return f'T={tp} not a multiple of {rows}'
    return None


def _load(plgpu, ref, layout):
    # jax 0.10 requires plgpu.load's index argument; 0.11 deprecates it (index the ref instead)
    if inspect.signature(plgpu.load).parameters['idx'].default is inspect.Parameter.empty:
        return plgpu.load(ref, (), layout=layout)
    return plgpu.load(ref, layout=layout)


def sigmoid_forward(q, k, v, bias, *, causal: bool, scale: float, config: MosaicConfig = MosaicConfig()):
    """o [B, T, H, D] in q's dtype. q [B, T, H, D], k, v [B, T, Hkv, D]; bias a scalar (may be traced)."""
    import jax.experimental.pallas as pl
    import jax.experimental.pallas.mosaic_gpu as plgpu

    if config.reciprocal not in (None, 'approx', 'newton'):
        raise ValueError(f"MosaicConfig.reciprocal must be None, 'approx' or 'newton'; got {config.reciprocal!r}")
    b, t, h, d = q.shape
    hkv = k.shape[2]
    groups = h // hkv
    dtype = q.dtype
    block_q, block_kv = config.block_q, config.block_kv
    newton = config.reciprocal_for(d) == 'newton'
    steps = min(config.max_concurrent_steps, t // block_kv)
    num_q_tiles = t // (2 * block_q)
    num_tiles = num_q_tiles * h * b
    programs = min(sm_count(), num_tiles)  # persistent: one per SM
    if config.persistent and config.overlap:
        raise ValueError('MosaicConfig: persistent and overlap are not implemented together')
    # sigma(x) = 1 / (1 + 2^(c qk + nb)) with c = -scale log2 e, nb = -b log2 e; nb is passed as a [block_q]
    # row vector (the layout of a reduced WGMMA tile) because the bias may be a traced array.
    # tanh: x / 2 = (scale / 2) qk + b / 2, the same row-vector form.
    c = 0.5 * scale if config.tanh else -scale * _LOG2E
    nb_rows = jnp.full((block_q,), 0.5 if config.tanh else -_LOG2E, jnp.float32) * jnp.asarray(bias, jnp.float32)

    def kernel(q_ref, k_ref, v_ref, nb_ref, out_ref, scoped):
        wg = lax.axis_index('wg')
        (qo_smem2, k_smem, v_smem, nb_smem2), (k_barriers, v_barriers, q_barriers, nb_barriers), consumed, sched = (
            scoped)
        k_consumed, v_consumed = consumed

        def schedule_barrier():
            plgpu.barrier_arrive(sched)
            plgpu.barrier_wait(sched)

        def order(rank):
            # causal: the longest rows first (the grid runs q_seq in order), so that short tiles fill the tail
            return num_q_tiles - 1 - rank if causal and config.longest_first else rank

        def steps_of(q_tile):
            if causal:
                return pl.cdiv((q_tile + 1) * (2 * block_q), jnp.array(block_kv, jnp.int32))
            return t // block_kv

        def tiles(body, init):
            """body(batch, q_head, q_tile, base) -> base for this program's tiles; base: the K, V steps streamed
            before the tile (their slots and barrier phases continue across the tiles of a persistent program)."""
            if not config.persistent:
                body(lax.axis_index('batch'), lax.axis_index('heads'), order(lax.axis_index('q_seq')), init)
                return
            sm = lax.axis_index('sm')

            def one(i, base):
                flat = sm + i * programs
                rank, rest = lax.div(flat, jnp.int32(h * b)), lax.rem(flat, jnp.int32(h * b))
                return body(lax.rem(rest, jnp.int32(b)), lax.div(rest, jnp.int32(b)), order(rank), base)
            lax.fori_loop(0, lax.div(num_tiles - 1 - sm, jnp.int32(programs)) + 1, one, init)

        def consumer_tile(batch, q_head, q_tile, base):
            tile_steps = steps_of(q_tile)

            def slot_of(step):
                n = base + step
                return n % steps if isinstance(n, int) else lax.rem(n, jnp.array(steps, n.dtype))
            qo_smem, nb_smem = qo_smem2.at[wg], nb_smem2.at[wg]
            q_base = q_tile * (2 * block_q) + wg * block_q
            kv_steps = pl.cdiv(q_base + block_q, jnp.array(block_kv, jnp.int32)) if causal else tile_steps
            plgpu.copy_gmem_to_smem(q_ref.at[batch, pl.ds(q_base, block_q), q_head], qo_smem, q_barriers.at[wg])
            plgpu.copy_gmem_to_smem(nb_ref, nb_smem, nb_barriers.at[wg])
            plgpu.barrier_wait(q_barriers.at[wg])
            plgpu.barrier_wait(nb_barriers.at[wg])
            nb = _load(plgpu, nb_smem, plgpu.Layout.WGMMA.reduce(1))
            acc = plgpu.layout_cast(jnp.full((block_q, d), 0, dtype=jnp.float32), plgpu.Layout.WGMMA)

            @pl.when(kv_steps > 0)
            def _():
                plgpu.barrier_wait(k_barriers.at[slot_of(0)])

            pl.when(wg == 1)(schedule_barrier)

            def probs(qk, step, masked: bool):
                # sigma of one [block_q, block_kv] score tile in the dot dtype; approx_math: ex2.approx and a fast
                # reciprocal (or the Newton one: finite, as 1 / 2^126 is 0 in bf16 anyway). The [block_q] bias column
                # is broadcast here, in the loops (as FA3's row max): a [block_q, block_kv] copy held across them
                # would take 64 registers per thread.
                a = qk * c + lax.broadcast_in_dim(nb, qk.shape, [0])
                if config.tanh:
                    p = 0.5 * jnp.tanh(a) + 0.5
                else:
                    x = 1.0 + jnp.exp2(a)
                    p = rcp_newton(jnp.minimum(x, 2.0 ** 126)) if newton else 1.0 / x
                if masked:
                    rows = plgpu.broadcasted_iota(jnp.int32, (block_q, block_kv), 0, layout=plgpu.Layout.WGMMA)
                    cols = plgpu.broadcasted_iota(jnp.int32, (block_q, block_kv), 1, layout=plgpu.Layout.WGMMA)
                    p = jnp.where(rows + q_base >= cols + step * block_kv, p, 0.0)
                return p.astype(dtype)

            def kv_loop(step, acc, masked: bool = False):
                slot = slot_of(step)

                def compute_qk(acc_ref):
                    plgpu.wgmma(acc_ref, qo_smem, k_smem.at[slot].transpose((1, 0)))
                    schedule_barrier()
                    return acc_ref[...]

                qk = pl.run_scoped(compute_qk, plgpu.ACC((block_q, block_kv), jnp.float32))
                plgpu.barrier_arrive(k_consumed.at[slot])
                p16 = probs(qk, step, masked)
                acc, p16 = lax.optimization_barrier((acc, p16))
                plgpu.barrier_arrive(sched)  # done with the score math
                plgpu.barrier_wait(v_barriers.at[slot])
                plgpu.barrier_wait(sched)  # the other warpgroup has issued its QK^T: tensor cores free

                def compute_pv(acc_ref):
                    plgpu.wgmma(acc_ref, p16, v_smem.at[slot])
                    nxt = step + 1

                    @pl.when(nxt < kv_steps)
                    def _():
                        plgpu.barrier_wait(k_barriers.at[slot_of(nxt)])

                acc = pl.run_state(compute_pv)(plgpu.ACC.init(acc))
                plgpu.barrier_arrive(v_consumed.at[slot])
                return acc

            def overlapped(o_ref):
                # step 0 alone (QK^T, its probabilities; masked: a no-op unless step 0 is a diagonal step), then
                # per step j: QK_j and PV_{j-1} issued together, the probabilities of j while PV_{j-1} runs, and
                # PV of the last step after the loop. Two rendezvous per step, as kv_loop.
                def first(qk_ref):
                    plgpu.wgmma(qk_ref, qo_smem, k_smem.at[0].transpose((1, 0)))
                    schedule_barrier()
                    qk = qk_ref[...]
                    plgpu.barrier_arrive(k_consumed.at[0])
                    # the barrier pins the math before the arrival on `sched` below (LLVM may sink pure code)
                    return lax.optimization_barrier((probs(qk, jnp.int32(0), causal),))[0]

                p16 = pl.run_scoped(first, plgpu.ACC((block_q, block_kv), jnp.float32))
                plgpu.barrier_arrive(sched)
                plgpu.barrier_wait(v_barriers.at[0])
                plgpu.barrier_wait(sched)

                def step_fn(step, p16_prev, masked: bool = False):
                    slot = lax.rem(step, jnp.array(steps, step.dtype))
                    prev = lax.rem(step - 1, jnp.array(steps, step.dtype))
                    plgpu.barrier_wait(k_barriers.at[slot])

                    def body(qk_ref):
                        plgpu.wgmma(qk_ref, qo_smem, k_smem.at[slot].transpose((1, 0)))
                        plgpu.wgmma(o_ref, p16_prev, v_smem.at[prev])
                        schedule_barrier()
                        qk = plgpu.wgmma_accumulator_load(qk_ref, wait_n=1)  # QK_j done; PV_{j-1} may run on
                        plgpu.barrier_arrive(k_consumed.at[slot])
                        p16 = probs(qk, step, masked)
                        plgpu.wgmma_wait(0)
                        return lax.optimization_barrier((p16_prev, p16))[1]

                    p16 = pl.run_scoped(body, plgpu.ACC((block_q, block_kv), jnp.float32))
                    plgpu.barrier_arrive(v_consumed.at[prev])
                    plgpu.barrier_arrive(sched)
                    plgpu.barrier_wait(v_barriers.at[slot])
                    plgpu.barrier_wait(sched)
                    return p16

                if causal:
                    unmasked = jnp.maximum(lax.div(q_base, jnp.array(block_kv, jnp.int32)), 1)
                    p16 = lax.fori_loop(1, unmasked, step_fn, p16)
                    p16 = lax.fori_loop(unmasked, kv_steps, functools.partial(step_fn, masked=True), p16)
                else:
                    p16 = lax.fori_loop(1, kv_steps, step_fn, p16)
                last = lax.rem(kv_steps - 1, jnp.array(steps, jnp.int32))
                plgpu.wgmma(o_ref, p16, v_smem.at[last])
                out = o_ref[...]
                plgpu.barrier_arrive(v_consumed.at[last])
                return out

            def drain(step, _):
                # steps the producer loaded for the other warpgroup's rows: release them, keep the turns (persistent:
                # wait for them too, so that this warpgroup's barrier phases stay in step for the next tile)
                slot = slot_of(step)
                if config.persistent:
                    plgpu.barrier_wait(k_barriers.at[slot])
                    plgpu.barrier_wait(v_barriers.at[slot])
                plgpu.barrier_arrive(k_consumed.at[slot])
                plgpu.barrier_arrive(v_consumed.at[slot])
                schedule_barrier()
                schedule_barrier()

            if config.overlap:
                acc = pl.run_scoped(overlapped, plgpu.ACC((block_q, d), jnp.float32))
            elif not causal:
                acc = lax.fori_loop(0, tile_steps, kv_loop, acc)
            else:
                unmasked = lax.div(q_base, jnp.array(block_kv, jnp.int32))
                acc = lax.fori_loop(0, unmasked, kv_loop, acc)
                acc = lax.fori_loop(unmasked, kv_steps, functools.partial(kv_loop, masked=True), acc)
            if causal:
                lax.fori_loop(kv_steps, tile_steps, drain, None)
            pl.when(wg == 0)(schedule_barrier)
            qo_smem[...] = acc.astype(dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[batch, pl.ds(q_base, block_q), q_head])
            plgpu.wait_smem_to_gmem(0)  # (persistent: before the next tile's Q lands in qo_smem)
            return base + tile_steps

        @pl.when(wg < 2)
        def _consumer():
            plgpu.set_max_registers(232, action='increase')
            tiles(consumer_tile, jnp.int32(0) if config.persistent else 0)

        def producer_tile(batch, q_head, q_tile, base):
            kv_head = lax.div(q_head, jnp.array(groups, q_head.dtype))
            for i in range(steps):
                s = (batch, pl.ds(i * block_kv, block_kv), kv_head)
                plgpu.copy_gmem_to_smem(k_ref.at[s], k_smem.at[i], k_barriers.at[i])
                plgpu.copy_gmem_to_smem(v_ref.at[s], v_smem.at[i], v_barriers.at[i])

            @pl.loop(0, steps_of(q_tile) - steps)
            def _(step):
                nxt = step + steps
                slot = lax.rem(step, jnp.array(steps, step.dtype))
                s = (batch, pl.ds(nxt * block_kv, block_kv), kv_head)
                plgpu.barrier_wait(k_consumed.at[slot])
                plgpu.copy_gmem_to_smem(k_ref.at[s], k_smem.at[slot], k_barriers.at[slot])
                plgpu.barrier_wait(v_consumed.at[slot])
                plgpu.copy_gmem_to_smem(v_ref.at[s], v_smem.at[slot], v_barriers.at[slot])

        def producer_tile_persistent(batch, q_head, q_tile, base):
            # slots continue from the previous tiles: a slot is refilled once both warpgroups released it, counting
            # from the program's first `steps` loads (which need no release). With base = 0 this is producer_tile,
            # which the one-tile grid keeps as timed (its first loads unrolled, no conditional waits).
            kv_head = lax.div(q_head, jnp.array(groups, q_head.dtype))
            tile_steps = steps_of(q_tile)

            @pl.loop(0, tile_steps)
            def _(step):
                n = base + step
                slot = lax.rem(n, jnp.array(steps, n.dtype))
                s = (batch, pl.ds(step * block_kv, block_kv), kv_head)
                pl.when(n >= steps)(lambda: plgpu.barrier_wait(k_consumed.at[slot]))
                plgpu.copy_gmem_to_smem(k_ref.at[s], k_smem.at[slot], k_barriers.at[slot])
                pl.when(n >= steps)(lambda: plgpu.barrier_wait(v_consumed.at[slot]))
                plgpu.copy_gmem_to_smem(v_ref.at[s], v_smem.at[slot], v_barriers.at[slot])
            return base + tile_steps

        @pl.when(wg == 2)
        def _producer():
            plgpu.set_max_registers(40, action='decrease')
            if config.persistent:
                tiles(producer_tile_persistent, jnp.int32(0))
            else:
                tiles(producer_tile, 0)

    def entry(q_ref, k_ref, v_ref, nb_ref, out_ref):
        transforms = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
        scratch = [
            plgpu.SMEM((2, block_q, d), dtype, transforms=transforms),
            plgpu.SMEM((steps, block_kv, d), dtype, transforms=transforms),
            plgpu.SMEM((steps, block_kv, d), dtype, transforms=transforms),
            plgpu.SMEM((2, block_q), jnp.float32),
        ]
        pl.run_scoped(
            lambda *args: kernel(q_ref, k_ref, v_ref, nb_ref, out_ref, args),
            scratch,
            (
                plgpu.Barrier(num_barriers=steps),
                plgpu.Barrier(num_barriers=steps),
                plgpu.Barrier(num_barriers=2),
                plgpu.Barrier(num_barriers=2),
            ),
            (plgpu.Barrier(num_arrivals=2, num_barriers=steps),) * 2,
            plgpu.Barrier(num_arrivals=2),
            collective_axes='wg',
        )

    if config.persistent:
        grid, grid_names = (programs,), ('sm',)
    else:
        grid, grid_names = (h, num_q_tiles, b), ('heads', 'q_seq', 'batch')
    return plgpu.kernel(
        entry,
        out_type=jax.ShapeDtypeStruct(q.shape, dtype),
        grid=grid,
        grid_names=grid_names,
        num_threads=3,
        thread_name='wg',
        compiler_params=plgpu.CompilerParams(approx_math=True),
    )(q, k, v, nb_rows)
