#!/usr/bin/env bash
# One GPU session's standing checks, most important first, each under its own time limit, so that a command cut
# off by the device's per-call limit still leaves the earlier results:
#   1. the linear kernels' GPU tests against the fp32 oracles (o and every gradient; 336 s on the H200);
#   2. every op at issue 6's shape against cuDNN, FLA (its backward runs for gla; the others need Triton >= 3.7.1)
#      and the pure-JAX chunk form (kernels checked against chunk, o and every gradient): simple_gla and gla in
#      step 2, the delta rules and sigmoid in step 2b (one command held all five until FLA's and the 100-ms timing
#      batches' compile and warm-up outgrew it: cut after delta_rule's FLA forward at 560 s, twelfth session);
#   3. time per token from T = 2048 to 65536 at B*T = 65536 (criterion 3), gla's split at split_states='xla'
#      (the default 'sweeps' against it), and the split's block_states in key tiles, at 8 warps, 128-row chunks
#      and 2 or 4 stages (3 the default since the eighth session; split_parts.py --key-tiles);
#   4. per-kernel device time of gla forward and forward+backward, and of the delta rule's and simple_gla's
#      split forwards at T = 65536 (kernel_profile.py);
#   5. the flash (softmax / sigmoid, Triton and Mosaic GPU) kernels' GPU tests (> 280 s);
#   6. criterion 5b: the GLA, DeltaNet and softmax LMs at T = 8192 in one process (~300 s);
#   7. gla's backward (the _o pieces: training's case, no d final_state) around the eighth session's defaults: the
#      backward intra kernel's key tiles, stages and widths at K = 128 and K = 64, and the sweeps with dq and dv
#      in launches of their own (a second sample), without precise_dg (its cost), at one pipeline stage, and with
#      the intra kernel's dq, dk in fp32 (bf16_intra_grads=false; bf16 is the default since the ninth session);
#   8. the sigmoid forwards in FlashSigmoid's tanh form (sigmoid_math='tanh') and on a persistent grid
#      (sigmoid_forward='mosaic_persistent'): the sigmoid GPU tests against the oracle, then their times beside the
#      plain Mosaic forward, the overlapped one, the Triton one and cuDNN softmax, and MosaicConfig settings;
#   9. issue 9's one-GPU rows of the GLA LM (scale.py: T = 2048, 32768 and 131072; tokens/s, peak memory or OOM),
#      the baselines its data- and sequence-parallel runs compare against, while no multi-GPU machine is lent.
#  10. the delta split's state-only sweeps on the transposed state (KernelConfig.split_states_transposed, built in
#      the twelfth session, timed in the thirteenth and 'both' by default since): the split's GPU tests, the forward
#      at B=1 T=65536 and B=2 T=32768 for 'none', 'transition' and the default (delta_rule and gated_delta_rule);
#      criterion 3 at the default is step 3.
# Results (JSON, logs) go to $OUT (default benchmarks/results/gpu_checks-<date>). Each line below fits one
# 10-minute device command (the limits add up to 420, 560 (2 and 2b each), 570, 530, 560, 480, 420, 560 and 430 s).
# ops_gpu.py --table-from merges 2's and 2b's JSON. Usage, from the repo root:
#   bash benchmarks/gpu_checks.sh 1        # first: the linear kernels' GPU tests at the eighth session's defaults
#   bash benchmarks/gpu_checks.sh 8
#   bash benchmarks/gpu_checks.sh 3 4
#   bash benchmarks/gpu_checks.sh 7
#   bash benchmarks/gpu_checks.sh 2
#   bash benchmarks/gpu_checks.sh 2b
#   bash benchmarks/gpu_checks.sh 5
#   bash benchmarks/gpu_checks.sh 6
#   bash benchmarks/gpu_checks.sh 9
#   bash benchmarks/gpu_checks.sh 10
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu_checks-$(date +%Y-%m-%d)}
mkdir -p "$OUT"
steps=${*:-1 2 2b 3 4 5 6}
run() {  # run STEP LIMIT_S NAME CMD...: the command's output to $OUT/NAME.log, its tail to stdout
  local step=$1 limit=$2 name=$3
  shift 3
  [[ " $steps " == *" $step "* ]] || return 0
  echo "== $step $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "   exit $?"
  grep -v Warning "$OUT/$name.log" | tail -14
}
run 1 420 tests_linear python3 -m pytest -q -p no:cacheprovider tests/ops/test_gla_kernel.py \
  tests/ops/test_simple_gla_kernel.py tests/ops/test_delta_rule_kernel.py tests/ops/test_block_states.py \
  -k "gpu or long"
run 2 560 issue_shape python3 benchmarks/ops_gpu.py --ops simple_gla,gla \
  --impls kernel,chunk,cudnn,fla --shapes 4x4096x16x128 --out "$OUT/ops_gpu_issue_shape.json"
run 2b 560 issue_shape_delta_sigmoid python3 benchmarks/ops_gpu.py --ops delta_rule,gated_delta_rule,sigmoid \
  --impls kernel,chunk,cudnn,fla --shapes 4x4096x16x128 --out "$OUT/ops_gpu_issue_shape_delta_sigmoid.json"
run 3 150 scaling python3 benchmarks/ops_gpu.py --ops simple_gla,gla,delta_rule,gated_delta_rule --impls kernel \
  --modes fwd --shapes scaling --out "$OUT/ops_gpu_scaling.json"
run 3 120 scaling_gla_xla python3 benchmarks/ops_gpu.py --ops gla --impls kernel --modes fwd --shapes scaling \
  --kernel-config gla:split_states=xla --out "$OUT/ops_gpu_scaling_gla_xla.json"
run 3 60 block_states_key_tiles python3 benchmarks/split_parts.py --key-tiles
run 4 60 profile_gla_fwd python3 benchmarks/kernel_profile.py --op gla --mode fwd --out "$OUT/profile_gla_fwd.json"
run 4 60 profile_delta_65536 python3 benchmarks/kernel_profile.py --op delta_rule --mode fwd 1 65536 16 128 \
  --out "$OUT/profile_delta_65536.json"
run 4 60 profile_simple_gla_65536 python3 benchmarks/kernel_profile.py --op simple_gla --mode fwd 1 65536 16 128 \
  --out "$OUT/profile_simple_gla_65536.json"
run 4 60 profile_gla_fwd_bwd python3 benchmarks/kernel_profile.py --op gla --mode fwd_bwd \
  --out "$OUT/profile_gla_fwd_bwd.json"
run 7 200 gla_intra_tiles python3 benchmarks/kernel_parts.py --op gla --parts intra_bwd,fwd_bwd_o --config default \
  --config intra_key_tile_bwd=0 --config num_stages_intra_bwd=1 --config num_stages_intra_bwd=3 \
  --config intra_width_bwd=32 --config intra_key_tile_bwd=128,num_warps_intra_bwd=4 --out "$OUT/gla_intra_tiles.json"
run 7 150 gla_intra_tiles_k64 python3 benchmarks/kernel_parts.py --op gla --parts intra_bwd,fwd_bwd_o 8 8192 12 64 \
  --config default --config intra_key_tile_bwd=32,num_warps_intra_bwd=2 --config intra_key_tile_bwd=32 \
  --out "$OUT/gla_intra_tiles_k64.json"
run 7 180 gla_sweeps_more python3 benchmarks/kernel_parts.py --op gla --parts bwd_sweeps_o,fwd_bwd_o --config default \
  --config bwd_apart=dq+dv,block_k_dq=32,block_v_bwd=32 --config precise_dg=false --config num_stages_bwd=1 \
  --config bf16_intra_grads=false \
  --out "$OUT/gla_sweeps_more.json"
run 5 480 tests_flash python3 -m pytest -q -p no:cacheprovider tests/ops/test_flash_kernel.py -k "gpu or long"
run 6 420 lm_8192 python3 benchmarks/train_throughput.py --in-process --kinds gla,softmax,deltanet --seq-lens 8192 \
  --steps 10 --out "$OUT/train_throughput_8192.json"
run 8 260 tests_sigmoid_mosaic python3 -m pytest -q -p no:cacheprovider tests/ops/test_flash_kernel.py \
  -k "gpu_shapes and sigmoid and not overlap and not newton and not f16x2"
run 8 300 sigmoid_forwards python3 benchmarks/sigmoid_forwards.py --shapes 2 --out "$OUT/sigmoid_forwards.json"
run 9 560 scale_one_gpu python3 benchmarks/scale.py --steps 5 \
  --plan 'gla:2048:32:data=1;gla:32768:2:data=1;gla:131072:1:data=1' --out "$OUT/scale_one_gpu.json"
run 10 150 tests_split_transposed python3 -m pytest -q -p no:cacheprovider tests/ops/test_delta_rule_kernel.py \
  -k "sequence_split"
run 10 110 delta_transposed_65536 python3 benchmarks/kernel_parts.py --op delta_rule --parts fwd 1 65536 16 128 \
  --config split_states_transposed=none --config split_states_transposed=transition --config default \
  --config split_states_transposed=none --out "$OUT/delta_transposed_65536.json"
run 10 80 delta_transposed_32768 python3 benchmarks/kernel_parts.py --op delta_rule --parts fwd 2 32768 16 128 \
  --config split_states_transposed=none --config default --out "$OUT/delta_transposed_32768.json"
run 10 90 gdr_transposed_65536 python3 benchmarks/kernel_parts.py --op gated_delta_rule --parts fwd 1 65536 16 128 \
  --config split_states_transposed=none --config split_states_transposed=transition --config default \
  --out "$OUT/gdr_transposed_65536.json"
echo "results in $OUT"
